//! The component's memory snapshot taken out of its data segments, so
//! that a warm process can map it itself and reset it in place from run to
//! run (see `capsa_sandbox::slots`).
//!
//! Exactly one core module of the component may have active data segments,
//! all into the one memory it defines (32-bit, not shared), at constant
//! offsets, and it must be instantiated once; no other module may define a
//! memory of the same minimum size. Its active segments become empty
//! passive ones (the indices stay; an active segment is dropped once
//! applied, so `memory.init` from it behaves as before), and what they
//! would have written, in order, is the image.

use crate::component::{CoreInstance, Wiring, rebuild};
use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{DataKind, Parser, Payload};

/// The component without the memory's data, the image (from address 0),
/// and the memory's minimum size in bytes.
pub fn split_image(component: &[u8]) -> Option<(Vec<u8>, Vec<u8>, usize)> {
    let wiring = Wiring::read(component)?;
    let mut found: Option<(u32, Vec<u8>, usize)> = None;
    let mut minimums = Vec::new();
    for (m, range) in wiring.modules.iter().enumerate() {
        let bytes = &component[range.clone()];
        let mut memories = Vec::new();
        let mut imported_memories = 0u32;
        let mut image = Vec::new();
        let mut active = 0;
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.ok()? {
                Payload::ImportSection(r) => {
                    for i in r.into_imports() {
                        if matches!(i.ok()?.ty, wasmparser::TypeRef::Memory(_)) {
                            imported_memories += 1;
                        }
                    }
                }
                Payload::MemorySection(r) => {
                    for mem in r {
                        memories.push(mem.ok()?);
                    }
                }
                Payload::DataSection(r) => {
                    for d in r {
                        let d = d.ok()?;
                        if let DataKind::Active {
                            memory_index,
                            offset_expr,
                        } = d.kind
                        {
                            active += 1;
                            if memory_index != 0 || imported_memories != 0 {
                                return None;
                            }
                            let offset = crate::component::evaluate_i32(&offset_expr, |_| None)?;
                            let offset = usize::try_from(offset as u32).ok()?;
                            let end = offset.checked_add(d.data.len())?;
                            if image.len() < end {
                                image.resize(end, 0);
                            }
                            image[offset..end].copy_from_slice(d.data);
                        }
                    }
                }
                _ => {}
            }
        }
        for mem in &memories {
            minimums.push((m as u32, mem.initial));
        }
        if active > 0 {
            let [mem] = memories[..] else { return None };
            if mem.memory64 || mem.shared || found.is_some() {
                return None;
            }
            let minimum = usize::try_from(mem.initial.checked_mul(65536)?).ok()?;
            if image.len() > minimum {
                return None;
            }
            found = Some((m as u32, image, minimum));
        }
    }
    let (module, image, minimum) = found?;
    let instantiated = wiring
        .instances
        .iter()
        .filter(|i| matches!(i, CoreInstance::Module(m, _) if *m == module))
        .count();
    if instantiated != 1 {
        return None;
    }
    if minimums
        .iter()
        .any(|&(m, initial)| m != module && initial * 65536 == minimum as u64)
    {
        return None;
    }
    let out = rebuild(component, &wiring, |m, data| {
        if m != module {
            return Some(None);
        }
        let mut re = Passive;
        let mut out = wasm_encoder::Module::new();
        re.parse_core_module(&mut out, Parser::new(0), data).ok()?;
        Some(Some(out.finish()))
    })?;
    Some((out, image, minimum))
}

struct Passive;

impl Reencode for Passive {
    type Error = std::convert::Infallible;

    fn parse_data(
        &mut self,
        data: &mut wasm_encoder::DataSection,
        datum: wasmparser::Data<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        match datum.kind {
            DataKind::Active { .. } => {
                data.passive(std::iter::empty());
                Ok(())
            }
            DataKind::Passive => reencode::utils::parse_data(self, data, datum),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(modules: &str, instances: &str) -> Vec<u8> {
        wat::parse_str(format!("(component {modules} {instances})")).unwrap()
    }

    const MAIN: &str = r#"(core module $main
        (memory (export "memory") 2)
        (data (i32.const 16) "abc")
        (data (i32.const 70000) "xyz")
        (data "passive")
        (func (export "f") (result i32) (i32.load8_u (i32.const 16))))"#;

    fn active_data(component: &[u8]) -> usize {
        let mut n = 0;
        for p in Parser::new(0).parse_all(component) {
            if let Payload::DataSection(r) = p.unwrap() {
                for d in r {
                    n += usize::from(matches!(d.unwrap().kind, DataKind::Active { .. }));
                }
            }
        }
        n
    }

    #[test]
    fn the_image_is_what_the_active_segments_write() {
        let c = component(MAIN, "(core instance (instantiate $main))");
        let (out, image, minimum) = split_image(&c).unwrap();
        assert_eq!(minimum, 2 * 65536);
        let mut want = vec![0u8; 70003];
        want[16..19].copy_from_slice(b"abc");
        want[70000..].copy_from_slice(b"xyz");
        assert_eq!(image, want);
        assert_eq!(active_data(&c), 2);
        assert_eq!(active_data(&out), 0);
        // The passive segment keeps its bytes and its index.
        assert!(out.windows(7).any(|w| w == b"passive"));
    }

    #[test]
    fn what_it_cannot_follow_is_not_split() {
        // Instantiated twice: two memories would share one image.
        let twice = component(
            MAIN,
            "(core instance (instantiate $main)) (core instance (instantiate $main))",
        );
        assert!(split_image(&twice).is_none());
        // Data into an imported memory.
        let imported = component(
            &format!(
                r#"{MAIN} (core module $lib (import "m" "memory" (memory 1)) (data (i32.const 0) "q"))"#
            ),
            r#"(core instance $m (instantiate $main)) (core instance (instantiate $lib (with "m" (instance $m))))"#,
        );
        assert!(split_image(&imported).is_none());
        // Another memory of the same size, which would get the image too.
        let same = component(
            &format!("{MAIN} (core module $other (memory 2))"),
            "(core instance (instantiate $main)) (core instance (instantiate $other))",
        );
        assert!(split_image(&same).is_none());
        // An offset that is not a constant.
        let global = component(
            r#"(core module $g (global (export "g") i32 (i32.const 0)))
               (core module $main (import "g" "g" (global i32)) (memory 1) (data (global.get 0) "a"))"#,
            r#"(core instance $g (instantiate $g)) (core instance (instantiate $main (with "g" (instance $g))))"#,
        );
        assert!(split_image(&global).is_none());
    }
}
