//! Functions only the test agent has (tests/custom_agent.rs), declared for
//! both halves like the example's.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// An enum with unit, tuple and struct variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    /// Unit.
    Point,
    /// Tuple.
    Named(String),
    /// Struct.
    Circle {
        /// Radius.
        r: f64,
        /// Optional label.
        label: Option<String>,
    },
}

/// A struct of everything: text, enum, bytes, a large vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Text.
    pub name: String,
    /// An enum.
    pub shapes: Vec<Shape>,
    /// Bytes (all 256 values).
    pub data: ByteBuf,
    /// A large vector.
    pub numbers: Vec<u64>,
}

mito::declare_function!(
    /// Replies its argument, as received.
    pub Echo, "test.echo", Sample, Sample
);
mito::declare_function!(
    /// Fails with its argument as the error's text.
    pub Fail, "test.fail", String, ()
);
mito::declare_function!(
    /// Panics with its argument as the message.
    pub Panic, "test.panic", String, ()
);
mito::declare_function!(
    /// Reads a file with `std::fs` (an `io::Error` on failure).
    pub ReadText, "test.read_text", String, String
);
