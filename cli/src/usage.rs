//! Command lines that parse but carry a value the command cannot use (`--misfire sometimes`,
//! `--from yesterday`): they exit 2, as a command line clap refuses does, so that a script can
//! tell a mistake in its call (2) from a failure of the call (1).

use std::fmt;

#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error as an `anyhow::Error`, formatted like `format!`.
macro_rules! usage {
    ($($arg:tt)*) => {
        anyhow::Error::new($crate::usage::Usage(format!($($arg)*)))
    };
}
pub(crate) use usage;
