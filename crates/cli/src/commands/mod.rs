//! One module per subcommand.

pub mod bundle;
pub mod cache;
pub mod inspect;
pub mod pack;
pub mod pip;
pub mod pycache;
pub mod python;
pub mod run;
pub mod serve;
pub mod web;
