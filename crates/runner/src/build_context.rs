//! A build context as the docker CLI sends it: the directory's contents minus what its
//! `.dockerignore` excludes, streamed as a tar.
//!
//! `.dockerignore` follows Docker's rules: one pattern per line, `#` comments, paths
//! relative to the context (a leading `/` is dropped), `*` and `?` within one path segment,
//! `**` for any number of segments, `[a-z]` classes, `!` re-including what an earlier line
//! excluded, the last matching line deciding. A pattern that matches a directory excludes
//! everything under it. The Dockerfile and `.dockerignore` are sent even when excluded, as
//! the docker CLI does (the daemon needs the Dockerfile).

use std::path::{Path, PathBuf};

use berth_engine_core::{Error, Result, TarStream};

use crate::archive::stream_tar;

/// The parsed patterns of a `.dockerignore`.
///
/// ```
/// use berth_runner::build_context::DockerIgnore;
///
/// let ignore = DockerIgnore::parse("target\n*.log\n!keep.log\n**/secret*\n");
/// assert!(ignore.excludes("target/debug/berth"));
/// assert!(ignore.excludes("build.log"));
/// assert!(!ignore.excludes("keep.log"));
/// assert!(ignore.excludes("a/b/secret.txt"));
/// assert!(!ignore.excludes("src/main.rs"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// (segments, is an exception `!`).
    patterns: Vec<(Vec<String>, bool)>,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore`.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (line, exception) = match line.strip_prefix('!') {
                    Some(rest) => (rest.trim(), true),
                    None => (line, false),
                };
                let segments: Vec<String> = line
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_owned)
                    .collect();
                (!segments.is_empty()).then_some((segments, exception))
            })
            .collect();
        Self { patterns }
    }

    /// Reads `dir/.dockerignore`; none means nothing is excluded.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `.dockerignore` when it exists but cannot be read.
    pub fn load(dir: &Path) -> Result<Self> {
        match std::fs::read_to_string(dir.join(".dockerignore")) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::invalid_spec(
                ".dockerignore",
                format!("cannot read {}: {e}", dir.join(".dockerignore").display()),
            )),
        }
    }

    /// Whether the context-relative `path` (`/`-separated) is left out.
    #[must_use]
    pub fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (pattern, exception) in &self.patterns {
            // The path itself or one of its parent directories.
            let hit = (1..=segments.len()).any(|n| match_segments(pattern, &segments[..n]));
            if hit {
                excluded = !exception;
            }
        }
        excluded
    }

    fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(_, exception)| *exception)
    }
}

fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            match_segments(rest, path) || (!path.is_empty() && match_segments(pattern, &path[1..]))
        }
        Some((first, rest)) => {
            !path.is_empty()
                && glob(first.as_bytes(), path[0].as_bytes())
                && match_segments(rest, &path[1..])
        }
    }
}

/// Go's `filepath.Match` within one segment: `*`, `?`, `[...]` (with `^`/`!` and ranges),
/// `\` escapes.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob(rest, &name[1..]),
        Some((b'[', rest)) => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            let (negated, mut class) = match rest.first() {
                Some(b'^' | b'!') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut matched = false;
            let mut first = true;
            loop {
                match class.split_first() {
                    None => return false, // unterminated class: no match
                    Some((b']', after)) if !first => {
                        class = after;
                        break;
                    }
                    Some(_) => {}
                }
                first = false;
                let lo = class[0];
                if class.len() >= 3 && class[1] == b'-' && class[2] != b']' {
                    matched |= (lo..=class[2]).contains(&c);
                    class = &class[3..];
                } else {
                    matched |= lo == c;
                    class = &class[1..];
                }
            }
            matched != negated && glob(class, name_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            name.first() == Some(&rest[0]) && glob(&rest[1..], &name[1..])
        }
        Some((&p, rest)) => name.first() == Some(&p) && glob(rest, &name[1..]),
    }
}

/// The build context of `dir` with `dockerfile` (relative to it): the directory's contents
/// minus what `.dockerignore` excludes, streamed.
///
/// # Errors
/// [`Error::NotFound`] when `dir` is not a directory; [`Error::InvalidSpec`] naming
/// `.dockerignore` when it cannot be read.
pub fn pack(dir: &Path, dockerfile: &str) -> Result<TarStream> {
    if !dir.is_dir() {
        return Err(Error::NotFound {
            what: "local directory",
            name: dir.display().to_string(),
        });
    }
    let ignore = DockerIgnore::load(dir)?;
    let dir = dir.to_owned();
    let keep: Vec<String> = vec![
        dockerfile.trim_start_matches("./").to_owned(),
        ".dockerignore".to_owned(),
    ];
    Ok(stream_tar(move |builder| {
        walk(builder, &dir, &PathBuf::new(), &ignore, &keep)
    }))
}

fn walk(
    builder: &mut tar::Builder<&mut dyn std::io::Write>,
    root: &Path,
    rel: &Path,
    ignore: &DockerIgnore,
    keep: &[String],
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let text = rel_path.to_string_lossy().replace('\\', "/");
        let excluded = ignore.excludes(&text) && !keep.contains(&text);
        let is_dir = entry.file_type()?.is_dir();
        if is_dir {
            if !excluded {
                builder.append_dir(&rel_path, entry.path())?;
            }
            if !excluded || ignore.has_exceptions() {
                walk(builder, root, &rel_path, ignore, keep)?;
            }
        } else if !excluded {
            builder.append_path_with_name(entry.path(), &rel_path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn patterns_follow_dockers_rules() {
        let i = DockerIgnore::parse(
            "# comment\n/node_modules\n*.tmp\n!important.tmp\ndocs/**/*.md\n!docs/keep/README.md\nfile?.txt\n[ab]c\n",
        );
        for excluded in [
            "node_modules",
            "node_modules/x/y.js",
            "a.tmp",
            "docs/x.md",
            "docs/a/b/x.md",
            "file1.txt",
            "ac",
            "bc",
        ] {
            assert!(i.excludes(excluded), "{excluded}");
        }
        for kept in [
            "important.tmp",
            "docs/keep/README.md",
            "sub/a.tmp", // *.tmp is the context root only
            "file10.txt",
            "cc",
            "src/node_modules",
        ] {
            assert!(!i.excludes(kept), "{kept}");
        }
        assert!(!DockerIgnore::parse("").excludes("anything"));
    }

    #[tokio::test]
    async fn the_context_leaves_out_what_dockerignore_excludes_but_keeps_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.join(".dockerignore"), "*\n!app\n").unwrap();
        std::fs::create_dir_all(d.join("app/sub")).unwrap();
        std::fs::write(d.join("app/sub/main.sh"), "echo").unwrap();
        std::fs::create_dir_all(d.join("secrets")).unwrap();
        std::fs::write(d.join("secrets/key"), "k").unwrap();
        std::fs::write(d.join("notes.txt"), "n").unwrap();

        let mut stream = pack(d, "Dockerfile").unwrap();
        let mut bytes = Vec::new();
        while let Some(piece) = stream.next().await {
            bytes.extend_from_slice(&piece.unwrap());
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        let names: BTreeSet<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned()
            })
            .collect();
        let expected: BTreeSet<String> = [
            ".dockerignore",
            "Dockerfile",
            "app",
            "app/sub",
            "app/sub/main.sh",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(names, expected);
    }
}
