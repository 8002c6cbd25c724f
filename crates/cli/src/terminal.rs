//! The local terminal: size, raw mode (restored on drop).

use std::os::fd::AsFd;

use berth_engine_core::TtySize;
use rustix::termios::{self, OptionalActions, Termios};

/// Whether standard input is a terminal.
pub fn stdin_is_terminal() -> bool {
    termios::isatty(std::io::stdin().as_fd())
}

/// The size of the terminal on standard output (else standard input), or 24x80.
pub fn size() -> TtySize {
    let from = |fd: std::os::fd::BorrowedFd<'_>| {
        termios::tcgetwinsize(fd)
            .ok()
            .filter(|w| w.ws_row > 0 && w.ws_col > 0)
            .map(|w| TtySize {
                rows: w.ws_row,
                cols: w.ws_col,
            })
    };
    from(std::io::stdout().as_fd())
        .or_else(|| from(std::io::stdin().as_fd()))
        .unwrap_or(TtySize { rows: 24, cols: 80 })
}

/// Raw mode on standard input while alive.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Switches standard input to raw mode; `None` when it is not a terminal.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw).ok()?;
        Some(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}
