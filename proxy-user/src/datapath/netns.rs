//! The network namespaces the processes of a cgroup tree live in: on a node, the pods' ones and
//! the host's, each opened once however many processes share it.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
};

/// An open network namespace (`/proc/PID/ns/net`) and its inode number, which names it.
#[derive(Debug)]
pub struct Netns {
    pub inode: u64,
    pub file: File,
}

/// Every network namespace a process under `cgroup` (the socket hooks' cgroup, whose
/// processes' sockets the socket LB translated) is in, in inode order. Processes that exit
/// meanwhile and cgroups removed meanwhile are skipped: their sockets are gone with them.
pub fn namespaces_of(cgroup: &Path) -> Vec<Netns> {
    let mut found: BTreeMap<u64, File> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        dirs.extend(
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path()),
        );
        let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines() {
            let path = format!("/proc/{pid}/ns/net");
            // The link's text (`net:[INODE]`) names the namespace without opening it.
            let Some(inode) = fs::read_link(&path)
                .ok()
                .and_then(|target| netns_inode(&target.to_string_lossy()))
            else {
                continue;
            };
            if found.contains_key(&inode) {
                continue;
            }
            if let Ok(file) = File::open(&path) {
                found.insert(inode, file);
            }
        }
    }
    found
        .into_iter()
        .map(|(inode, file)| Netns { inode, file })
        .collect()
}

/// The inode number in a namespace link's text, `net:[4026531840]`.
fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_namespace_link() {
        assert_eq!(netns_inode("net:[4026531840]"), Some(4_026_531_840));
        assert_eq!(netns_inode("mnt:[4026531840]"), None);
        assert_eq!(netns_inode("net:[]"), None);
    }

    #[test]
    fn finds_this_process_namespace_in_its_cgroup() {
        // This process's cgroup v2 path, from /proc/self/cgroup (`0::/PATH`).
        let cgroups = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let Some(path) = cgroups.lines().find_map(|l| l.strip_prefix("0::")) else {
            panic!("no cgroup v2 line in /proc/self/cgroup:\n{cgroups}");
        };
        let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| PathBuf::from(f[1]))
            .expect("a cgroup2 mount");
        let own = fs::read_link("/proc/self/ns/net").expect("read /proc/self/ns/net");
        let own = netns_inode(&own.to_string_lossy()).expect("a net namespace link");
        let found = namespaces_of(&root.join(path.trim_start_matches('/')));
        assert!(
            found.iter().any(|ns| ns.inode == own),
            "own namespace {own} not among {found:?}"
        );
    }
}
