//! Broadcast: one call sent to many contexts at once, crossing each link
//! once, and every reply gathered back ([`call_many`]).
//!
//! Map:
//! - [`call_many`] encodes the call once, groups the targets by the stream
//!   that carries them (a direct context, or the first hop every context
//!   behind it shares), and sends each group one message: a plain call to
//!   a lone target, else a `RELAY` (`proto::message::Relay`) that the hop
//!   copies towards each target (`agent::children`'s `relay`), sending a
//!   grandchild hop one smaller relay for the targets behind it. So the
//!   call's bytes cross every link once, whatever the number of leaves.
//! - Each target has its own reply mailbox (its handle is that copy's
//!   `reply_to`): the bytes of the call are the same for every target, only
//!   the relay's per-target `(dst, reply_to)` list differs. Replies come
//!   back one frame per target (the hops pass them up as they come; they do
//!   not gather them into one message per hop, see "Replies" below).
//! - [`gather`] waits for every mailbox until the broadcast's one deadline:
//!   a dead, slow or hostile target gets its own typed [`CallError`]
//!   (`Disconnected`, `Timeout`, `Decode`, `Remote`), the others their
//!   replies; nothing waits past the deadline.
//!
//! **Replies.** Each reply is its own frame from its context, checked by
//! the router like any reply (it must come from the context the mailbox
//! belongs to, on the stream that carries it), so a hostile leaf can only
//! answer for itself. A hop does not merge its children's replies into one
//! message: that would need a gather table with deadlines in the agent and
//! a new message the master splits again, while the hop's outbox already
//! writes the replies that are waiting in one `write` and the master reads
//! them in one `read` (a reply to `info` is ~150 bytes: 10,000 leaves send
//! the master ~1.5 MB). What crosses once per hop is the call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{disconnected, Context, Pending};
use super::error::CallError;
use super::RouterState;
use crate::proto::functions::Function;
use crate::proto::message::{encode_call, relay_front};
use crate::proto::{handles, Header, MASTER_ID};

/// Bytes a relay's front may take per target (a `(u32, u32)` pair: two
/// varints of at most 5 bytes each, plus slack), to keep a relay within
/// the router's message size.
const FRONT_PER_TARGET: usize = 12;

/// One target's outcome: the context, and its reply or why there is none.
pub type Answer<R> = (Context, Result<R, CallError>);

/// Calls `F` with `args` in every context of `targets` and gathers the
/// replies: one [`Answer`] per target, in the order of `targets`.
///
/// The call is encoded once and each link carries it once (see the module
/// docs): the master sends one message per first hop, not one per leaf.
/// Every target must answer within `timeout` of the start of the
/// broadcast (the targets' own call timeouts do not apply): one that does
/// not gets [`CallError::Timeout`], one that is gone or goes meanwhile
/// [`CallError::Disconnected`], a reply that does not decode
/// [`CallError::Decode`]; none of them holds up the others' replies, and
/// `call_many` returns at the latest at that deadline (plus the time to
/// decode what came). A context named twice is called twice.
///
/// ```
/// use std::time::Duration;
/// use mito::master::broadcast::call_many;
/// use mito::{functions::Info, LocalOptions, Router};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new()?;
/// let hop = router.local(LocalOptions::default())?;
/// let leaves = vec![hop.local(LocalOptions::default())?, hop.local(LocalOptions::default())?];
/// // One message crosses the master's link to the hop; two replies come back.
/// for (ctx, reply) in call_many::<Info>(&leaves, &(), Duration::from_secs(30)) {
///     assert_eq!(reply?.pid, ctx.connect_info().pid);
/// }
/// # Ok(())
/// # }
/// ```
pub fn call_many<F: Function>(targets: &[Context], args: &F::Args, timeout: Duration) -> Vec<Answer<F::Reply>> {
    let deadline = Instant::now() + timeout;
    let sent = send::<F>(targets, args, deadline);
    gather(targets, sent, deadline, timeout)
}

/// Per target: its reply to wait for, or why the call did not go out.
type Sent<R> = Result<Pending<R>, CallError>;

/// Encodes the call once and sends it to every live target, a group per
/// stream; see [`call_many`].
fn send<F: Function>(targets: &[Context], args: &F::Args, deadline: Instant) -> Vec<Sent<F::Reply>> {
    let Some(first) = targets.first() else { return Vec::new() };
    let encode_error = |c: &Context, detail: &str| CallError::Encode {
        context: c.name().into(),
        function: F::NAME.into(),
        detail: detail.into(),
    };
    // A declared user function goes as `name@<signature>`, as
    // `Context::call` sends it (the agent checks it against its own).
    let signed = F::SIGNATURE.map(|sig| crate::proto::declare::signed_name(F::NAME, sig));
    // A hop reads frames up to the protocol's limit, whatever this
    // router's own limit for what agents send it.
    let max = first.state.table.max_message_size.min(crate::proto::MAX_MESSAGE_SIZE) as usize;
    let call = match encode_call(signed.as_deref().unwrap_or(F::NAME), args) {
        Ok(c) if c.len() + 64 <= max => c,
        Ok(c) => {
            let detail = format!("{} bytes is above the maximum message size", c.len());
            return targets.iter().map(|c| Err(encode_error(c, &detail))).collect();
        }
        Err(e) => return targets.iter().map(|c| Err(encode_error(c, &e.to_string()))).collect(),
    };
    let mut out: Vec<Option<Sent<F::Reply>>> = targets.iter().map(|_| None).collect();
    // Those already gone fail now; the others are grouped by their stream,
    // in their router (ids are per router: contexts of two routers may
    // share a stream id and still not a stream).
    let mut groups: Vec<((*const RouterState, u32), Vec<usize>)> = Vec::new();
    for (i, c) in targets.iter().enumerate() {
        if let Some(d) = c.shared.disconnected() {
            out[i] = Some(Err(disconnected(&c.shared, F::NAME, d.reason)));
            continue;
        }
        let key = (Arc::as_ptr(&c.state), c.shared.stream_id);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(i),
            None => groups.push((key, vec![i])),
        }
    }
    // A relay stays within the message size: a group too large for one
    // (over ~10 million targets behind one hop at the default size) goes
    // as several.
    let per_relay = (max.saturating_sub(call.len() + 64) / FRONT_PER_TARGET).max(1);
    for ((_, stream), group) in groups {
        for part in group.chunks(per_relay) {
            for (i, r) in send_group::<F>(targets, stream, part, &call, deadline) {
                out[i] = Some(r);
            }
        }
    }
    out.into_iter().zip(targets).map(|(r, c)| r.unwrap_or_else(|| Err(encode_error(c, "not sent")))).collect()
}

/// Sends `call` to the targets `group` (indices into `targets`) that share
/// the stream of context `stream`: a plain call to a lone target, else one
/// relay to the context that owns the stream.
fn send_group<F: Function>(
    targets: &[Context],
    stream: u32,
    group: &[usize],
    call: &[u8],
    deadline: Instant,
) -> Vec<(usize, Sent<F::Reply>)> {
    let replies: Vec<(usize, u32, Pending<F::Reply>)> = group
        .iter()
        .map(|&i| {
            let (handle, p) = targets[i].expect_reply::<F>();
            (i, handle, p)
        })
        .collect();
    let table = &targets[group[0]].state.table;
    let sent = if let [(i, handle, _)] = replies[..] {
        let h = Header {
            dst: targets[i].id(),
            src: MASTER_ID,
            auth: MASTER_ID,
            handle: handles::CALL_FUNCTION,
            reply_to: handle,
            ..Header::default()
        };
        table.send_parts(&h, call, Some(deadline)).map_err(|d| d.reason)
    } else {
        let to: Vec<(u32, u32)> = replies.iter().map(|&(i, h, _)| (targets[i].id(), h)).collect();
        match relay_front(&to, handles::CALL_FUNCTION, 0, call.len()) {
            Ok(mut payload) => {
                payload.extend_from_slice(call);
                let h = Header {
                    dst: stream,
                    src: MASTER_ID,
                    auth: MASTER_ID,
                    handle: handles::RELAY,
                    ..Header::default()
                };
                table.send_parts(&h, &payload, Some(deadline)).map_err(|d| d.reason)
            }
            Err(e) => Err(format!("cannot encode the relay: {e}")),
        }
    };
    match sent {
        Ok(()) => replies.into_iter().map(|(i, _, p)| (i, Ok(p))).collect(),
        Err(reason) => replies
            .into_iter()
            .map(|(i, handle, _)| {
                table.close_mailbox(handle);
                (i, Err(disconnected(&targets[i].shared, F::NAME, reason.clone())))
            })
            .collect(),
    }
}

/// Waits for every reply until `deadline`, in order; a reply that comes
/// while an earlier one is awaited waits in its mailbox, so the total wait
/// is the slowest target's, never the sum. A late target's
/// [`CallError::Timeout`] names the broadcast's `timeout`.
fn gather<R: serde::de::DeserializeOwned>(
    targets: &[Context],
    sent: Vec<Sent<R>>,
    deadline: Instant,
    timeout: Duration,
) -> Vec<Answer<R>> {
    targets
        .iter()
        .zip(sent)
        .map(|(c, s)| {
            let r = s.and_then(|p| p.wait_until(Some(deadline))).map_err(|e| match e {
                CallError::Timeout { context, function, .. } => CallError::Timeout { context, function, timeout },
                other => other,
            });
            (c.clone(), r)
        })
        .collect()
}
