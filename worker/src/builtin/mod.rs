//! The processors every worker can offer without user code: `shell` and `http`.

mod http;
mod lines;
mod shell;

pub use http::HttpProcessor;
pub use shell::ShellProcessor;
