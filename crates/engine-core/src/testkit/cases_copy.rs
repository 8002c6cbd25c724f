//! Conformance cases: copying trees in and out of an environment.

use std::collections::BTreeMap;
use std::io::Read;

use super::cases::{run, MIB};
use super::Fixture;
use crate::{collect_tar_stream, tar_stream_from_bytes, ErrorKind, ExecRequest};

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File { mode: u32, data: Vec<u8> },
    Dir,
    Symlink(String),
}

fn tree_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        match link {
            Some(target) => b.append_link(&mut h, path, target).expect("link"),
            None => b.append_data(&mut h, path, data).expect("entry"),
        }
    };
    add("tree/", tar::EntryType::Directory, 0o755, b"", None);
    add(
        "tree/run.sh",
        tar::EntryType::Regular,
        0o755,
        b"#!/bin/sh\necho run\n",
        None,
    );
    add("tree/empty/", tar::EntryType::Directory, 0o755, b"", None);
    add("tree/sub/", tar::EntryType::Directory, 0o750, b"", None);
    add(
        "tree/sub/data.bin",
        tar::EntryType::Regular,
        0o644,
        &[0, 1, 2, 255],
        None,
    );
    add(
        "tree/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("run.sh"),
    );
    b.into_inner().expect("tar")
}

fn read_tree(archive: &[u8]) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut a = tar::Archive::new(archive);
    for entry in a.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let mode = entry.header().mode().expect("mode") & 0o7777;
        let node = match entry.header().entry_type() {
            tar::EntryType::Directory => Node::Dir,
            tar::EntryType::Symlink => Node::Symlink(
                entry
                    .link_name()
                    .expect("link")
                    .expect("link target")
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("data");
                Node::File { mode, data }
            }
        };
        nodes.insert(path, node);
    }
    nodes
}

/// A tree with a symlink, an empty directory and a 0755 file goes in and comes back out alike.
pub async fn copy_round_trip_keeps_symlinks_dirs_and_modes(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        fx.engine
            .copy_in(&env, "/tmp", tar_stream_from_bytes(tree_tar()))
            .await
            .expect("copy_in");
        let out = run(fx, &env, ExecRequest::new(["/tmp/tree/link"])).await;
        assert_eq!(
            out.stdout_lossy(),
            "run\n",
            "the 0755 file runs via the symlink"
        );
        let archive = collect_tar_stream(
            fx.engine
                .copy_out(&env, "/tmp/tree")
                .await
                .expect("copy_out"),
            64 * MIB,
        )
        .await
        .expect("read copy_out stream");
        let got = read_tree(&archive);
        let want = read_tree(&tree_tar());
        assert_eq!(got, want);
        // A single file comes out as one entry named after it.
        let archive = collect_tar_stream(
            fx.engine
                .copy_out(&env, "/tmp/tree/sub/data.bin")
                .await
                .expect("copy_out file"),
            MIB,
        )
        .await
        .expect("read");
        let got = read_tree(&archive);
        assert_eq!(
            got.get("data.bin"),
            Some(&Node::File {
                mode: 0o644,
                data: vec![0, 1, 2, 255]
            })
        );
    })
    .await;
}

/// Copying into or out of a missing path is `NotFound` naming the path.
pub async fn copy_errors_name_the_path(fx: &Fixture) {
    fx.with_env(&fx.spec(), |env| async move {
        let err = fx
            .engine
            .copy_in(&env, "/no/such/dir", tar_stream_from_bytes(tree_tar()))
            .await
            .expect_err("copy into a missing directory");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
        let err = match fx.engine.copy_out(&env, "/no/such/file").await {
            Ok(stream) => collect_tar_stream(stream, MIB)
                .await
                .expect_err("copy out of a missing path"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/no/such/file"), "{err}");
    })
    .await;
}
