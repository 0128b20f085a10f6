//! What a sandboxed program may do: file, network and environment grants,
//! the denials that win over them, and the limits of a run.
//!
//! This crate is pure data and decisions: it never touches the file system or
//! the network (see `clippy.toml`), so every decision it makes is unit-testable.
//! The caller resolves host paths (canonicalization needs the file system) and
//! hands them in through [`PathResolver`].

mod env;
mod fs;
mod guest;
mod limits;
mod net;
mod raw;
pub mod text;
pub mod winpath;

pub use env::{EnvPattern, EnvPolicy};
pub use fs::{
    Access, FsGrant, FsOp, FsPolicy, GrantKind, PathResolver, ResolvedPath, default_guest,
    default_host, join_guest_checked, normalize_guest, normalize_host, strip_guest_prefix,
};
pub use guest::{GuestPath, MAX_GUEST_PATH};
pub use limits::{Limits, format_duration, format_size, parse_duration, parse_size};
pub use net::{AddrClass, HostPattern, ListenRule, NetPolicy, NetRule, PortSpec, classify};
pub use raw::{DirGrant, RawLimits, RawPolicy, Scalar, TypedGrants, split_all};
pub use text::{escape_for_terminal, is_terminal_unsafe, quote_flag_value};

/// A policy every part of which has been checked: what the sandbox enforces.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub fs: FsPolicy,
    pub net: NetPolicy,
    pub env: EnvPolicy,
    pub limits: Limits,
}

/// The outcome of one capability decision, with what the user reads about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the rule shown (as the flag that grants it).
    Allow { rule: String },
    /// Refused. `rule` is the flag that decided, if one did; `reason` goes in
    /// parentheses after the target; `hint` is the narrowest flag that would
    /// allow it (none where no flag can, as under a `--deny-*` the user gave).
    Deny {
        rule: Option<String>,
        reason: String,
        hint: Option<String>,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// Everything that can be wrong with a policy, from a flag or a policy file.
/// Each message quotes the input it rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid network rule {input:?}: {reason}")]
    NetRule { input: String, reason: String },
    #[error("invalid listen rule {input:?}: {reason}")]
    ListenRule { input: String, reason: String },
    #[error("invalid environment variable pattern {input:?}: {reason}")]
    EnvPattern { input: String, reason: String },
    #[error("invalid --env {input:?}: expected NAME=VALUE")]
    EnvAssign { input: String },
    #[error("invalid size {input:?}: {reason}")]
    Size { input: String, reason: String },
    #[error("invalid duration {input:?}: {reason}")]
    Duration { input: String, reason: String },
    #[error("invalid fuel {input:?}: expected a whole number of instructions or \"none\"")]
    Fuel { input: String },
    #[error("invalid path grant {input:?}: {reason}")]
    Path { input: String, reason: String },
    #[error("empty item in {list} {input:?}")]
    EmptyItem { list: String, input: String },
    #[error("invalid guest path {input:?}: {reason}")]
    GuestPath { input: String, reason: String },
    #[error("invalid policy file: {0}")]
    Toml(String),
}
