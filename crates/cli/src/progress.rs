//! Progress on stderr: a spinner on a terminal; without one, a plain line per phase of a start
//! (where stderr is berth's own); nothing with `--json`.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};

use berth_engine_core::{Progress, ProgressEvent};
use berth_runner::lifecycle::{StartPhase, StartProgress};
use indicatif::ProgressBar;

/// Where a start's progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A spinner, cleared when the start ends.
    Spinner,
    /// One line per phase.
    Lines,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// The mode for a start: quiet with `--json`; a spinner on a terminal; else lines when
    /// stderr is berth's own (`up`), nothing when it carries a command's output (`run`).
    pub fn for_start(json: bool, stderr_is_ours: bool) -> Self {
        match (json, std::io::stderr().is_terminal(), stderr_is_ours) {
            (true, ..) => Mode::Quiet,
            (false, true, _) => Mode::Spinner,
            (false, false, true) => Mode::Lines,
            (false, false, false) => Mode::Quiet,
        }
    }
}

/// A pull or build spinner drawn from the first event on (so a present image prints
/// nothing); silent with `--json` or without a terminal.
pub fn pulls(json: bool) -> Progress {
    if json {
        return Progress::none();
    }
    let bar = OnceLock::<ProgressBar>::new();
    Progress::new(move |e: &ProgressEvent| {
        let bar = bar.get_or_init(ProgressBar::new_spinner);
        let counts = match (e.current, e.total) {
            (Some(c), Some(t)) if t > 0 => format!(" {}/{} MiB", c >> 20, t >> 20),
            _ => String::new(),
        };
        let id =
            e.id.as_deref()
                .map(|i| format!("{i}: "))
                .unwrap_or_default();
        bar.set_message(format!("{id}{}{counts}", e.status));
        bar.tick();
    })
}

/// A start's progress in `mode`, and a guard that clears the spinner when dropped.
pub fn start(mode: Mode) -> (StartProgress, SpinnerGuard) {
    match mode {
        Mode::Quiet => (StartProgress::none(), SpinnerGuard(None)),
        Mode::Spinner => {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            let shown = bar.clone();
            let progress = StartProgress::new(move |phase| shown.set_message(phase.to_string()));
            (progress, SpinnerGuard(Some(bar)))
        }
        Mode::Lines => {
            let last = Arc::new(Mutex::new(String::new()));
            let progress = StartProgress::new(move |phase| {
                let line = line(phase);
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *last != line {
                    eprintln!("berth: {line}");
                    *last = line;
                }
            });
            (progress, SpinnerGuard(None))
        }
    }
}

/// The line for a phase, printed when it differs from the last: a pull names its image only
/// (its layers change too fast to list).
fn line(phase: &StartPhase) -> String {
    match phase {
        StartPhase::Pulling { image, .. } => format!("pulling {image}"),
        other => other.to_string(),
    }
}

/// Clears the start spinner when the start is over.
pub struct SpinnerGuard(Option<ProgressBar>);

impl Drop for SpinnerGuard {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_always_quiet() {
        assert_eq!(Mode::for_start(true, true), Mode::Quiet);
        assert_eq!(Mode::for_start(true, false), Mode::Quiet);
    }

    #[test]
    fn a_pull_line_names_the_image_once() {
        let image = berth_engine_core::ImageRef::new("busybox:1").expect("image");
        let phase = StartPhase::Pulling {
            image,
            event: ProgressEvent::status(Some("layer".into()), "Downloading"),
        };
        assert_eq!(line(&phase), "pulling busybox:1");
    }
}
