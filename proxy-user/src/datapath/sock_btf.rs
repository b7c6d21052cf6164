//! Checks the fixed `struct sock_common` offsets the `iter/udp` program reads
//! (`proxy_common::sock_common`) against the running kernel's BTF, so a kernel with another
//! layout runs without socket termination instead of with a program reading other fields.
//!
//! aya 0.16 parses BTF but keeps struct members private, so this reads the few parts of the
//! format it needs (Documentation/bpf/btf.rst): the header, each type's fixed part and the
//! size of its trailing data, and the members of structs and unions.

use std::{collections::HashMap, fs};

use anyhow::{Context as _, Result, bail};
use proxy_common::sock_common;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// Fails, naming the field, unless every offset of `sock_common::FIELDS` is the kernel's.
pub fn check_sock_common_offsets() -> Result<()> {
    let data = fs::read(VMLINUX_BTF).with_context(|| format!("read {VMLINUX_BTF}"))?;
    check_offsets(&data).with_context(|| format!("struct sock_common in {VMLINUX_BTF}"))
}

fn check_offsets(data: &[u8]) -> Result<()> {
    let btf = Btf::parse(data)?;
    let sock_common = btf
        .struct_named("sock_common")
        .context("no struct sock_common")?;
    for (name, expected) in sock_common::FIELDS {
        let bits = btf
            .member_offset(sock_common, name)
            .with_context(|| format!("no field {name}"))?;
        if bits != expected as u64 * 8 {
            bail!(
                "{name} is at bit {bits}, the socket-termination program reads it at byte \
                 {expected}"
            );
        }
    }
    Ok(())
}

/// One type's kind, name and, for structs and unions, members.
struct Type {
    kind: u32,
    name: u32,
    members: Vec<Member>,
}

struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u64,
}

struct Btf<'a> {
    strings: &'a [u8],
    /// Index 0 is type id 1 (id 0 is `void`).
    types: Vec<Type>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    let bytes = data
        .get(at..at + 4)
        .with_context(|| format!("BTF truncated at byte {at}"))?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("four bytes")))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self> {
        let magic = u16::from_le_bytes(
            data.get(0..2)
                .context("BTF shorter than its header")?
                .try_into()
                .expect("two bytes"),
        );
        if magic != BTF_MAGIC {
            bail!("not little-endian BTF (magic {magic:#x})");
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_end = type_off + u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_end = str_off + u32_at(data, 20)? as usize;
        let strings = data
            .get(str_off..str_end)
            .context("BTF string section out of bounds")?;
        let mut types = Vec::new();
        let mut at = type_off;
        while at < type_end {
            let name = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            // The size of what follows the 12-byte common part, by kind.
            let trailing = match kind {
                // int, var, decl_tag: one u32.
                1 | 14 | 17 => 4,
                // array: element type, index type, count.
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let member = at + i * 12;
                        let offset = u32_at(data, member + 8)?;
                        members.push(Member {
                            name: u32_at(data, member)?,
                            type_id: u32_at(data, member + 4)?,
                            // With kind_flag, the top 8 bits hold a bitfield's size.
                            bit_offset: u64::from(if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            }),
                        });
                    }
                    vlen * 12
                }
                // enum, func_proto: (name, value) or (name, type) pairs.
                6 | 13 => vlen * 8,
                // datasec, enum64: triples.
                15 | 19 => vlen * 12,
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag.
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("unknown BTF kind {other} at byte {}", at - 12),
            };
            at += trailing;
            types.push(Type {
                kind,
                name,
                members,
            });
        }
        Ok(Self { strings, types })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    fn struct_named(&self, name: &str) -> Option<&Type> {
        // Several structs may carry one name only in split BTF (modules); vmlinux has one.
        let by_name: HashMap<&[u8], &Type> = self
            .types
            .iter()
            .filter(|t| t.kind == KIND_STRUCT)
            .map(|t| (self.name(t.name), t))
            .collect();
        by_name.get(name.as_bytes()).copied()
    }

    /// The bit offset of the member `name` of `ty`, also inside anonymous structs and unions
    /// (where `skc_daddr` and `skc_dport` sit).
    fn member_offset(&self, ty: &Type, name: &str) -> Option<u64> {
        for member in &ty.members {
            let member_name = self.name(member.name);
            if member_name == name.as_bytes() {
                return Some(member.bit_offset);
            }
            if member_name.is_empty()
                && let Some(inner) = self.get(member.type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(offset) = self.member_offset(inner, name)
            {
                return Some(member.bit_offset + offset);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's layout is the one the program reads (a kernel where it is not
    /// would fail here rather than in the end-to-end tests).
    #[test]
    fn the_kernels_sock_common_has_the_offsets_the_program_reads() {
        check_sock_common_offsets().unwrap();
    }

    #[test]
    fn members_are_found_inside_anonymous_unions() {
        let data = fs::read(VMLINUX_BTF).unwrap();
        let btf = Btf::parse(&data).unwrap();
        let sock_common = btf.struct_named("sock_common").unwrap();
        assert_eq!(btf.member_offset(sock_common, "skc_v6_daddr"), Some(448));
        assert_eq!(btf.member_offset(sock_common, "skc_dport"), Some(96));
        assert_eq!(btf.member_offset(sock_common, "no_such_field"), None);
    }
}
