//! [`Token`]: what an epoll event is about, and its `u64` form.
//!
//! Every fd the agent's loop watches is registered with a token naming its
//! role, and comes back from `epoll_wait` with it. The loop matches on the
//! [`Token`] and never does arithmetic on the number: the layout below is
//! written once, here.
//!
//! Layout of the number: `0` parent rx, `1` parent tx, `2`/`3` the
//! IoLogger pipes of fd 1/2, `4` the termination signalfd; from `16`, eight
//! per command slot `s`: `16 + 8*s + {0 stdin, 1 stdout, 2 stderr, 3 pidfd,
//! 4 timeout timer}`; from `1 << 40`, two per child stream slot `c`:
//! `(1 << 40) + 2*c + {0 rx, 1 tx}`.

const PARENT_RX: u64 = 0;
const PARENT_TX: u64 = 1;
const LOG: u64 = 2;
const SIGNAL: u64 = 4;
const COMMAND: u64 = 16;
/// Tokens per command slot (five used).
const PER_COMMAND: u64 = 8;
const CHILD: u64 = 1 << 40;

/// One of the two output pipes: a command's stdout or stderr, or the
/// agent's own fd 1 or 2 (its IoLoggers). The discriminant is the fd
/// number, as [`crate::proto::functions::ExecOutput`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pipe {
    /// fd 1.
    Stdout = 1,
    /// fd 2.
    Stderr = 2,
}

impl Pipe {
    /// The pipe of fd `1 + i` (`i` 0 or 1: an index into a pair).
    pub fn from_index(i: usize) -> Pipe {
        if i == 0 {
            Pipe::Stdout
        } else {
            Pipe::Stderr
        }
    }
}

/// Which fd of a running command. The discriminant is the token's offset
/// in the command's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandFd {
    /// Its stdin (written).
    Stdin = 0,
    /// Its stdout (read).
    Stdout = 1,
    /// Its stderr (read).
    Stderr = 2,
    /// Its pidfd: readable once it exited.
    Exit = 3,
    /// Its timeout's timerfd.
    Timer = 4,
}

impl CommandFd {
    /// The fd of a command's output `pipe`.
    pub fn output(pipe: Pipe) -> CommandFd {
        match pipe {
            Pipe::Stdout => CommandFd::Stdout,
            Pipe::Stderr => CommandFd::Stderr,
        }
    }
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The stream from the parent is readable.
    ParentRx,
    /// The stream to the parent is writable.
    ParentTx,
    /// The IoLogger pipe that replaced the agent's fd 1 or 2.
    Log(Pipe),
    /// A termination signal arrived (signalfd).
    Signal,
    /// An fd of the command in a slot of the command table.
    Command(usize, CommandFd),
    /// The stream from the child in a slot of the children table.
    ChildRx(usize),
    /// The stream to the child in a slot of the children table.
    ChildTx(usize),
}

impl From<Token> for u64 {
    // Inlined: at a registration the token is a constant but for the slot,
    // and the match folds away (outlined, the agent was 60 bytes larger).
    #[inline(always)]
    fn from(t: Token) -> u64 {
        match t {
            Token::ParentRx => PARENT_RX,
            Token::ParentTx => PARENT_TX,
            Token::Log(p) => LOG + p as u64 - 1,
            Token::Signal => SIGNAL,
            Token::Command(slot, fd) => COMMAND + PER_COMMAND * slot as u64 + fd as u64,
            Token::ChildRx(slot) => CHILD + 2 * slot as u64,
            Token::ChildTx(slot) => CHILD + 2 * slot as u64 + 1,
        }
    }
}

impl Token {
    /// The token a number stands for (`None`: not one the agent registers).
    #[inline(always)]
    pub fn from_u64(t: u64) -> Option<Token> {
        Some(match t {
            PARENT_RX => Token::ParentRx,
            PARENT_TX => Token::ParentTx,
            SIGNAL => Token::Signal,
            LOG => Token::Log(Pipe::Stdout),
            3 => Token::Log(Pipe::Stderr),
            t if t >= CHILD => {
                let slot = ((t - CHILD) / 2) as usize;
                if (t - CHILD) % 2 == 0 {
                    Token::ChildRx(slot)
                } else {
                    Token::ChildTx(slot)
                }
            }
            t if t >= COMMAND => {
                let slot = ((t - COMMAND) / PER_COMMAND) as usize;
                let fd = match (t - COMMAND) % PER_COMMAND {
                    0 => CommandFd::Stdin,
                    1 => CommandFd::Stdout,
                    2 => CommandFd::Stderr,
                    3 => CommandFd::Exit,
                    _ => CommandFd::Timer,
                };
                Token::Command(slot, fd)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_comes_back_as_itself() {
        let mut all = alloc::vec![Token::ParentRx, Token::ParentTx, Token::Signal];
        for p in [Pipe::Stdout, Pipe::Stderr] {
            all.push(Token::Log(p));
        }
        for slot in [0, 1, 7, 1000] {
            for fd in [CommandFd::Stdin, CommandFd::Stdout, CommandFd::Stderr, CommandFd::Exit, CommandFd::Timer] {
                all.push(Token::Command(slot, fd));
            }
            all.push(Token::ChildRx(slot));
            all.push(Token::ChildTx(slot));
        }
        for t in all {
            assert_eq!(Token::from_u64(u64::from(t)), Some(t), "{t:?}");
        }
        assert_eq!(u64::from(Token::Command(2, CommandFd::Timer)), 16 + 8 * 2 + 4);
        assert_eq!(u64::from(Token::ChildTx(3)), (1 << 40) + 7);
        assert_eq!(Token::from_u64(5), None);
    }
}
