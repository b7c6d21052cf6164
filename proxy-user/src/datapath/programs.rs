//! The verified hook programs, pinned under `programs/<build>`: a restart with the same object
//! over the same maps opens them from their pins instead of verifying them again, which is
//! most of what a start costs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, DirBuilder},
    hash::{DefaultHasher, Hash as _, Hasher as _},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::MapInfo,
    programs::{CgroupSockAddr, CgroupSockAddrAttachType, Program, SchedClassifier, Xdp},
};
use aya_obj::programs::XdpAttachType;
use proxy_common::program_names;
use tracing::{info, warn};

/// `BPF_F_RDONLY_PROG`: a map the program may only read.
const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// How aya opens a program of each kind from its pin (a pin does not record the attach type).
#[derive(Clone, Copy)]
enum Kind {
    Xdp,
    Classifier,
    SockAddr(CgroupSockAddrAttachType),
}

/// Every program a hook runs, and its kind.
const HOOK_PROGRAMS: [(&str, Kind); 13] = {
    use CgroupSockAddrAttachType as Sock;
    [
        (program_names::CONNECT4, Kind::SockAddr(Sock::Connect4)),
        (program_names::SENDMSG4, Kind::SockAddr(Sock::UDPSendMsg4)),
        (program_names::RECVMSG4, Kind::SockAddr(Sock::UDPRecvMsg4)),
        (
            program_names::GETPEERNAME4,
            Kind::SockAddr(Sock::GetPeerName4),
        ),
        (program_names::CONNECT6, Kind::SockAddr(Sock::Connect6)),
        (program_names::SENDMSG6, Kind::SockAddr(Sock::UDPSendMsg6)),
        (program_names::RECVMSG6, Kind::SockAddr(Sock::UDPRecvMsg6)),
        (
            program_names::GETPEERNAME6,
            Kind::SockAddr(Sock::GetPeerName6),
        ),
        (program_names::XDP_INGRESS, Kind::Xdp),
        (program_names::TC_INGRESS, Kind::Classifier),
        (program_names::TC_EGRESS, Kind::Classifier),
        (program_names::TC_FROM_POD, Kind::Classifier),
        (program_names::TC_TO_POD, Kind::Classifier),
    ]
};

/// The socket hooks' programs, in attach order.
pub fn socket_programs() -> impl Iterator<Item = &'static str> {
    HOOK_PROGRAMS
        .into_iter()
        .filter(|(_, kind)| matches!(kind, Kind::SockAddr(_)))
        .map(|(name, _)| name)
}

/// How this start came by its programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounts {
    /// Loaded from the object (verified by the kernel) and pinned.
    pub verified: usize,
    /// Opened from the pins of an earlier start with the same build.
    pub reused: usize,
}

/// The hook programs of one build, opened from their pins (each pinned first when it has
/// none).
pub struct Programs {
    dir: PathBuf,
    /// The ids of the pinned maps: a reused program must use no other map.
    map_ids: BTreeSet<u32>,
    open: BTreeMap<&'static str, Program>,
    pub counts: ProgramCounts,
}

impl Programs {
    /// The programs of `object` (as loaded) over the maps pinned at `map_pins`, kept under
    /// `programs_dir`.
    ///
    /// The build is named by a hash of the object and of the pinned maps' ids: programs
    /// verified against other maps (a map recreated, resized) or from another object are never
    /// reused; their pins are removed by [`Self::remove_other_builds`].
    pub fn new(programs_dir: &Path, object: &[u8], map_pins: &[PathBuf]) -> Result<Self> {
        let mut map_ids = BTreeSet::new();
        for path in map_pins {
            let info = MapInfo::from_pin(path)
                .with_context(|| format!("read the pinned map {}", path.display()))?;
            map_ids.insert(info.id());
        }
        let mut hasher = DefaultHasher::new();
        object.hash(&mut hasher);
        map_ids.hash(&mut hasher);
        let dir = programs_dir.join(format!("{:016x}", hasher.finish()));
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        Ok(Self {
            dir,
            map_ids,
            open: BTreeMap::new(),
            counts: ProgramCounts::default(),
        })
    }

    /// The program `name`, ready to attach: opened from its pin, or first loaded from `ebpf`
    /// (the kernel verifies it) and pinned.
    pub fn get(&mut self, ebpf: &mut Ebpf, name: &str) -> Result<&mut Program> {
        let (name, kind) = HOOK_PROGRAMS
            .into_iter()
            .find(|(known, _)| *known == name)
            .with_context(|| format!("{name} is not a hook program"))?;
        if !self.open.contains_key(name) {
            let program = self.open_or_load(ebpf, name, kind)?;
            self.open.insert(name, program);
        }
        Ok(self.open.get_mut(name).expect("inserted above"))
    }

    fn open_or_load(&mut self, ebpf: &mut Ebpf, name: &str, kind: Kind) -> Result<Program> {
        let pin = self.dir.join(name);
        if pin.exists() {
            match open(&pin, kind).and_then(|program| self.check_maps(program)) {
                Ok(program) => {
                    self.counts.reused += 1;
                    return Ok(program);
                }
                Err(err) => {
                    warn!(
                        program = name,
                        "its pin is unusable, verifying it again: {err:#}"
                    );
                    fs::remove_file(&pin).with_context(|| format!("remove {}", pin.display()))?;
                }
            }
        }
        let program = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name}"))?;
        match program {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            _ => unreachable!("HOOK_PROGRAMS lists only these kinds"),
        }
        .with_context(|| format!("load program {name}"))?;
        program
            .pin(&pin)
            .with_context(|| format!("pin program {name} at {}", pin.display()))?;
        self.counts.verified += 1;
        open(&pin, kind)
    }

    /// `program`, when every map it writes is one of the pinned ones: a map left unpinned
    /// would be the earlier process's, which nobody reads any more. Its read-only data
    /// (`.rodata`, loaded from the same object) is its own.
    fn check_maps(&self, program: Program) -> Result<Program> {
        let mut foreign = Vec::new();
        for id in program.info()?.map_ids()?.unwrap_or_default() {
            if self.map_ids.contains(&id) {
                continue;
            }
            let info = MapInfo::from_id(id)?;
            if info.map_flags() & BPF_F_RDONLY_PROG == 0 {
                foreign.push(info.name_as_str().unwrap_or("?").to_owned());
            }
        }
        anyhow::ensure!(
            foreign.is_empty(),
            "it uses maps that are not pinned: {}",
            foreign.join(", ")
        );
        Ok(program)
    }

    /// Unpins the programs of other builds. Hooks still running one keep it alive until their
    /// link is replaced, so this comes after every hook of this start is attached.
    pub fn remove_other_builds(&self) -> Result<()> {
        let parent = self.dir.parent().expect("a build directory has a parent");
        for entry in fs::read_dir(parent)? {
            let path = entry?.path();
            if path == self.dir {
                continue;
            }
            info!(build = %path.display(), "unpinning the programs of another build");
            if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            }
            .with_context(|| format!("remove {}", path.display()))?;
        }
        Ok(())
    }
}

fn open(pin: &Path, kind: Kind) -> Result<Program> {
    let program = match kind {
        Kind::Xdp => Program::Xdp(Xdp::from_pin(pin, XdpAttachType::Interface)?),
        Kind::Classifier => Program::SchedClassifier(SchedClassifier::from_pin(pin)?),
        Kind::SockAddr(attach_type) => {
            Program::CgroupSockAddr(CgroupSockAddr::from_pin(pin, attach_type)?)
        }
    };
    Ok(program)
}
