//! One module per subcommand.

pub mod inspect;
pub mod pack;
pub mod python;
pub mod run;
