//! Crafted archives against [`super::extract_to`]: no daemon.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::*;

/// One member: raw name bytes (not validated, as a hostile archive writes them).
struct M<'a> {
    name: &'a [u8],
    kind: EntryType,
    mode: u32,
    data: &'a [u8],
    link: &'a [u8],
}

fn m<'a>(name: &'a str, kind: EntryType, mode: u32) -> M<'a> {
    M {
        name: name.as_bytes(),
        kind,
        mode,
        data: b"",
        link: b"",
    }
}

fn file<'a>(name: &'a str, mode: u32, data: &'a [u8]) -> M<'a> {
    M {
        data,
        ..m(name, EntryType::Regular, mode)
    }
}

fn link<'a>(name: &'a str, kind: EntryType, target: &'a str) -> M<'a> {
    M {
        link: target.as_bytes(),
        ..m(name, kind, 0o777)
    }
}

fn header(member: &M<'_>, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..member.name.len()].copy_from_slice(member.name);
    h.as_old_mut().linkname[..member.link.len()].copy_from_slice(member.link);
    h.set_entry_type(member.kind);
    h.set_mode(member.mode);
    h.set_size(size);
    h.set_uid(4242);
    h.set_gid(4242);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

fn archive(members: &[M<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for member in members {
        out.extend_from_slice(header(member, member.data.len() as u64).as_bytes());
        out.extend_from_slice(member.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn opts() -> ExtractOptions {
    ExtractOptions::default()
}

/// Extracts into a fresh directory `out`; returns the tempdir and the result.
fn run(
    bytes: &[u8],
    source: Option<&str>,
    options: &ExtractOptions,
) -> (tempfile::TempDir, Result<Extracted, CopyError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("out")).expect("out");
    let result = extract_to(
        bytes,
        &dir.path().join("out"),
        source.map(OsStr::new),
        options,
    );
    (dir, result)
}

/// The names under `dir`, recursively, sorted (symlinks not followed).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut work = vec![dir.to_owned()];
    while let Some(d) = work.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            out.push(p.strip_prefix(dir).expect("under").display().to_string());
            if fs::symlink_metadata(&p).expect("meta").is_dir() {
                work.push(p);
            }
        }
    }
    out.sort();
    out
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("meta").permissions().mode() & 0o7777
}

fn assert_left_nothing(dir: &tempfile::TempDir) {
    let left = tree(&dir.path().join("out"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn archive_setuid_setgid_sticky_are_stripped_and_umask_applies() {
    let bytes = archive(&[
        m("d/", EntryType::Directory, 0o7777),
        file("d/esc", 0o4755, b"#!/bin/sh\n"),
        file("d/g", 0o2775, b"x"),
    ]);
    let (dir, r) = run(&bytes, Some("d"), &opts());
    r.expect("accepted");
    let out = dir.path().join("out/d");
    let umask = current_umask();
    assert_eq!(mode_of(&out), 0o777 & !umask);
    assert_eq!(mode_of(&out.join("esc")), 0o755 & !umask);
    assert_eq!(mode_of(&out.join("g")), 0o775 & !umask);
    // Ownership is never taken from the archive (uid 4242 there).
    let me = fs::metadata(dir.path()).expect("meta").uid();
    assert_eq!(fs::metadata(out.join("esc")).expect("meta").uid(), me);

    let (dir, r) = run(&bytes, Some("d"), &opts().preserve_mode(true));
    r.expect("accepted");
    let out = dir.path().join("out/d");
    assert_eq!(mode_of(&out), 0o777);
    assert_eq!(mode_of(&out.join("esc")), 0o755);
    assert_eq!(mode_of(&out.join("g")), 0o775);
}

#[test]
fn archive_host_mode_fixtures() {
    assert_eq!(host_mode(0o4755, false, 0o022), 0o755);
    assert_eq!(host_mode(0o7777, false, 0o022), 0o755);
    assert_eq!(host_mode(0o7777, true, 0o022), 0o777);
    assert_eq!(host_mode(0o666, false, 0o077), 0o600);
    assert_eq!(
        parse_umask("Name:\tx\nUmask:\t0027\nState:\tR\n"),
        Some(0o027)
    );
    assert_eq!(parse_umask("Name:\tx\n"), None);
}

#[test]
fn archive_member_path_fixtures() {
    let o = opts();
    let ok = |n: &str| member_path(n.as_bytes(), &o).expect("accepted");
    assert_eq!(ok("a/b"), Some(PathBuf::from("a/b")));
    assert_eq!(ok("./a//b/"), Some(PathBuf::from("a/b")));
    assert_eq!(ok("./"), None);
    let refused = |n: &[u8]| member_path(n, &o).expect_err("refused");
    assert!(refused(b"/etc/passwd").is_refused());
    assert!(refused(b"a/../../x").is_refused());
    assert!(refused(b"..").is_refused());
    assert!(refused(b"").is_refused());
    let e = refused(b"a\nb");
    assert!(e.to_string().contains(r#""a\nb""#), "{e}");
    let e = refused(b"x\x1b[31mred");
    assert!(e.to_string().contains(r"\u{1b}[31mred"), "{e}");
    assert!(refused("a\u{9b}b".as_bytes()).is_refused());
    assert!(member_path(b"a\nb", &o.clone().allow_control_characters(true)).is_ok());
    let long = "a".repeat(4097);
    assert_eq!(refused(long.as_bytes()).limit(), Some(Limit::PathBytes));
    assert_eq!(source_name("/src/app/"), Some(OsStr::new("app")));
    assert_eq!(source_name("/"), None);
    assert_eq!(source_name("/src/."), None);
}

/// The same 512-byte directory header, forever.
struct EndlessHeaders {
    block: Vec<u8>,
    at: usize,
}

impl Read for EndlessHeaders {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(512 - self.at);
        out[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at = (self.at + n) % 512;
        Ok(n)
    }
}

#[test]
fn archive_endless_directory_headers_stop_at_the_entry_limit() {
    let block = header(&m("d/", EntryType::Directory, 0o555), 0)
        .as_bytes()
        .to_vec();
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = CopyLimits {
        max_entries: 200_000,
        ..CopyLimits::default()
    };
    let err = extract_to(
        EndlessHeaders { block, at: 0 },
        dir.path(),
        Some(OsStr::new("d")),
        &opts().limits(limits),
    )
    .expect_err("endless");
    assert_eq!(err.limit(), Some(Limit::Entries), "{err}");
    assert!(err.to_string().contains("--max-entries"), "{err}");
    assert!(tree(dir.path()).is_empty());
}

/// A header declaring `size` bytes, then zeros forever: a sparse 1 TiB file as tar sends it.
struct HugeFile {
    head: Vec<u8>,
    sent: usize,
}

impl Read for HugeFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.sent < self.head.len() {
            let n = out.len().min(self.head.len() - self.sent);
            out[..n].copy_from_slice(&self.head[self.sent..self.sent + n]);
            self.sent += n;
            return Ok(n);
        }
        out.fill(0);
        Ok(out.len())
    }
}

/// Extracts a member declaring 1 TiB followed by endless zeros; it must fail, leaving nothing.
fn huge(member: &M<'_>, source: Option<&str>) -> CopyError {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("out")).expect("out");
    let head = header(member, 1 << 40).as_bytes().to_vec();
    let err = extract_to(
        HugeFile { head, sent: 0 },
        &dir.path().join("out"),
        source.map(OsStr::new),
        &opts(),
    )
    .expect_err("a terabyte");
    assert_left_nothing(&dir);
    err
}

#[test]
fn archive_a_terabyte_file_hits_the_byte_limit_and_leaves_nothing() {
    let err = huge(&file("big", 0o644, b""), Some("big"));
    assert_eq!(err.limit(), Some(Limit::Bytes), "{err}");
    assert!(err.to_string().contains("--max-bytes"), "{err}");
    // A directory claiming a terabyte of data is not read forever either.
    let err = huge(&m("d/", EntryType::Directory, 0o755), Some("d"));
    assert_eq!(err.limit(), Some(Limit::Bytes), "{err}");

    // Counted across files: two of 600 KiB against a 1 MiB limit.
    let data = vec![7u8; 600 * 1024];
    let bytes = archive(&[
        m("d/", EntryType::Directory, 0o755),
        file("d/a", 0o644, &data),
        file("d/b", 0o644, &data),
    ]);
    let limits = CopyLimits {
        max_bytes: 1024 * 1024,
        ..CopyLimits::default()
    };
    let (dir, r) = run(&bytes, Some("d"), &opts().limits(limits));
    assert_eq!(r.expect_err("limit").limit(), Some(Limit::Bytes));
    assert_left_nothing(&dir);
}

#[test]
fn archive_oversized_extension_headers_are_refused_before_reading_them() {
    // A GNU long name or PAX header of a terabyte would be read into memory by tar-rs.
    let err = huge(&m("././@LongLink", EntryType::GNULongName, 0o644), None);
    assert_eq!(err.limit(), Some(Limit::PathBytes), "{err}");
    let err = huge(&m("pax", EntryType::XHeader, 0o644), None);
    assert!(matches!(err, CopyError::Malformed { .. }), "{err}");
}

#[test]
fn archive_long_names_and_pax_paths_are_read() {
    // What tar crates and Docker write for long names: GNU `L` and PAX `path`.
    let long = format!("d/{}", "n".repeat(150));
    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(2);
        b.append_data(&mut h, &long, &b"hi"[..]).expect("append");
        b.finish().expect("finish");
    }
    let (dir, r) = run(&out, Some("d"), &opts());
    r.expect("accepted");
    assert_eq!(
        fs::read(dir.path().join("out").join(&long)).expect("read"),
        b"hi"
    );

    let mut out = Vec::new();
    {
        let mut b = tar::Builder::new(&mut out);
        b.append_pax_extensions([("path", long.as_bytes())])
            .expect("pax");
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(3);
        h.set_path("d/short").expect("path");
        h.set_cksum();
        b.append(&h, &b"pax"[..]).expect("append");
        b.finish().expect("finish");
    }
    let (dir, r) = run(&out, Some("d"), &opts());
    r.expect("accepted");
    assert_eq!(
        fs::read(dir.path().join("out").join(&long)).expect("read"),
        b"pax"
    );
}

#[test]
fn archive_hostile_names_fail_the_copy_naming_the_entry() {
    for (name, want) in [
        ("x/../../evil", "x/../../evil"),
        ("/etc/evil", "/etc/evil"),
        ("x/a\nb", r"x/a\nb"),
        ("x/\u{1b}[2Jclear", r"x/\u{1b}[2Jclear"),
    ] {
        let bytes = archive(&[
            m("x/", EntryType::Directory, 0o755),
            file("x/fine", 0o644, b"ok"),
            file(name, 0o644, b"bad"),
        ]);
        let (dir, r) = run(&bytes, Some("x"), &opts());
        let err = r.expect_err(name);
        assert!(err.is_refused(), "{err}");
        assert!(err.to_string().contains(want), "{name}: {err}");
        assert_left_nothing(&dir);
        assert!(!dir.path().join("evil").exists());
    }
}

#[test]
fn archive_planted_symlinks_never_lead_outside() {
    for target in ["/outside", "../..", "../../outside"] {
        let bytes = archive(&[
            m("x/", EntryType::Directory, 0o755),
            link("x/lnk", EntryType::Symlink, target),
            file("x/lnk/pwned", 0o644, b"bad"),
        ]);
        let (dir, r) = run(&bytes, Some("x"), &opts());
        let err = r.expect_err(target);
        assert!(err.is_refused(), "{err}");
        assert!(err.to_string().contains("symlink"), "{err}");
        // Nothing at all, the planted link included.
        assert_left_nothing(&dir);
        assert!(!dir.path().join("pwned").exists());
    }
    // A symlink on its own is copied as a symlink.
    let bytes = archive(&[
        m("x/", EntryType::Directory, 0o755),
        link("x/lnk", EntryType::Symlink, "/etc/passwd"),
    ]);
    let (dir, r) = run(&bytes, Some("x"), &opts());
    r.expect("accepted");
    assert_eq!(
        fs::read_link(dir.path().join("out/x/lnk")).expect("link"),
        Path::new("/etc/passwd")
    );
}

#[test]
fn archive_hard_links_stay_inside_the_archive() {
    let outside = tempfile::NamedTempFile::new().expect("outside");
    let outside = outside.path().to_str().expect("utf8").to_owned();
    for target in [outside.as_str(), "../../etc/passwd", "x/missing", "x/lnk"] {
        let bytes = archive(&[
            m("x/", EntryType::Directory, 0o755),
            link("x/lnk", EntryType::Symlink, "/etc"),
            link("x/hard", EntryType::Link, target),
        ]);
        let (dir, r) = run(&bytes, Some("x"), &opts());
        let err = r.expect_err(target);
        assert!(err.is_refused(), "{target}: {err}");
        assert_left_nothing(&dir);
    }
    let bytes = archive(&[
        m("x/", EntryType::Directory, 0o755),
        file("x/f", 0o644, b"same"),
        link("x/hard", EntryType::Link, "x/f"),
    ]);
    let (dir, r) = run(&bytes, Some("x"), &opts());
    r.expect("accepted");
    let out = dir.path().join("out/x");
    assert_eq!(
        fs::metadata(out.join("f")).expect("f").ino(),
        fs::metadata(out.join("hard")).expect("hard").ino()
    );
}

#[test]
fn archive_devices_fifos_and_sparse_entries_are_refused() {
    for (kind, what) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
        (EntryType::GNUSparse, "sparse"),
    ] {
        let bytes = archive(&[
            m("x/", EntryType::Directory, 0o755),
            m("x/dev", kind, 0o666),
        ]);
        let (dir, r) = run(&bytes, Some("x"), &opts());
        let err = r.expect_err(what);
        assert!(err.is_refused() && err.to_string().contains(what), "{err}");
        assert_left_nothing(&dir);
    }
}

#[test]
fn archive_members_outside_the_copied_path_are_refused() {
    let bytes = archive(&[file("src", 0o644, b"ok"), file(".bashrc", 0o644, b"evil")]);
    let (dir, r) = run(&bytes, Some("src"), &opts());
    let err = r.expect_err("refused");
    assert!(err.to_string().contains(".bashrc"), "{err}");
    assert_left_nothing(&dir);
}

#[test]
fn archive_destination_follows_docker_cp() {
    let one = archive(&[file("f", 0o644, b"new")]);
    let tree_archive = archive(&[
        m("d/", EntryType::Directory, 0o755),
        file("d/a", 0o644, b"a"),
        m("d/sub/", EntryType::Directory, 0o755),
        file("d/sub/b", 0o644, b"b"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    // An existing file is overwritten by a file.
    fs::write(p.join("existing"), "old").expect("write");
    extract_to(
        &one[..],
        &p.join("existing"),
        Some(OsStr::new("f")),
        &opts(),
    )
    .expect("over");
    assert_eq!(fs::read_to_string(p.join("existing")).expect("read"), "new");
    // A new name gets the file, or the directory's contents.
    extract_to(&one[..], &p.join("renamed"), Some(OsStr::new("f")), &opts()).expect("new");
    assert_eq!(fs::read_to_string(p.join("renamed")).expect("read"), "new");
    extract_to(
        &tree_archive[..],
        &p.join("copy"),
        Some(OsStr::new("d")),
        &opts(),
    )
    .expect("dir");
    assert_eq!(fs::read_to_string(p.join("copy/sub/b")).expect("read"), "b");
    // Into an existing directory, merging with what is there.
    fs::create_dir_all(p.join("into/d/sub")).expect("mkdir");
    fs::write(p.join("into/d/sub/mine"), "keep").expect("write");
    fs::write(p.join("into/d/a"), "old").expect("write");
    extract_to(
        &tree_archive[..],
        &p.join("into"),
        Some(OsStr::new("d")),
        &opts(),
    )
    .expect("merge");
    assert_eq!(fs::read_to_string(p.join("into/d/a")).expect("read"), "a");
    assert_eq!(
        fs::read_to_string(p.join("into/d/sub/mine")).expect("read"),
        "keep"
    );
    assert_eq!(
        fs::read_to_string(p.join("into/d/sub/b")).expect("read"),
        "b"
    );
    // A directory cannot replace a file; a missing parent is an error; nothing staged remains.
    let err = extract_to(
        &tree_archive[..],
        &p.join("existing"),
        Some(OsStr::new("d")),
        &opts(),
    )
    .expect_err("dir onto file");
    assert!(matches!(err, CopyError::Destination { .. }), "{err}");
    let err = extract_to(&one[..], &p.join("no/such"), Some(OsStr::new("f")), &opts())
        .expect_err("no parent");
    assert!(matches!(err, CopyError::Destination { .. }), "{err}");
    assert!(
        !tree(p).iter().any(|n| n.contains(".berth-cp-")),
        "{:?}",
        tree(p)
    );
}

#[test]
fn archive_read_only_directories_get_their_mode_after_their_contents() {
    let bytes = archive(&[
        m("d/", EntryType::Directory, 0o555),
        m("d/locked/", EntryType::Directory, 0o500),
        file("d/locked/f", 0o444, b"x"),
    ]);
    let (dir, r) = run(&bytes, Some("d"), &opts().preserve_mode(true));
    r.expect("accepted");
    let out = dir.path().join("out/d");
    assert_eq!(fs::read(out.join("locked/f")).expect("read"), b"x");
    assert_eq!(mode_of(&out.join("locked")), 0o500);
    assert_eq!(mode_of(&out), 0o555);
    // Let the tempdir clean up.
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(out.join("locked"), fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn archive_limits_come_from_the_copy_config_section() {
    use crate::config::BerthConfig;
    let config = BerthConfig::from_yaml_str(
        "copy:\n  max_bytes: 1Gi\n  max_entries: 10\n  max_path_bytes: 100\n",
    )
    .expect("config");
    assert_eq!(
        config.copy.limits(),
        CopyLimits {
            max_bytes: 1024 * 1024 * 1024,
            max_entries: 10,
            max_path_bytes: 100,
        }
    );
    let config = BerthConfig::from_yaml_str("copy:\n  max_bytes: 5000\n").expect("config");
    assert_eq!(config.copy.limits().max_bytes, 5000);
    assert_eq!(
        BerthConfig::from_yaml_str("runner:\n  backend: docker\n")
            .expect("config")
            .copy
            .limits(),
        CopyLimits::default()
    );
    let err = BerthConfig::from_yaml_str("copy:\n  max_bytes: lots\n").expect_err("invalid");
    assert!(
        err.to_string().contains("max_bytes") || err.to_string().contains("lots"),
        "{err}"
    );
    let err = BerthConfig::from_yaml_str("copy:\n  max_byts: 1\n").expect_err("unknown");
    assert!(err.to_string().contains("max_bytes"), "{err}");
}
