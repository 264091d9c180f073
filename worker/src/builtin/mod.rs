//! The built-in processors: `shell` and `http`, and `container` (which runs a bundle's entry).

mod container;
mod http;
mod lines;
mod shell;

pub(crate) use container::ContainerProcessor;
pub use http::{HttpProcessor, http_client};
pub use shell::ShellProcessor;
