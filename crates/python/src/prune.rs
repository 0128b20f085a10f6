//! Drops the exports of the component's core modules that nothing reads.
//!
//! componentize-py links CPython as shared libraries: libc, libpython and
//! the runtime each export every public symbol (about 6,000 names), of which
//! the component's wiring uses about a fifth. wasmtime reads every export's
//! name back each time it loads the compiled component, which cost about a
//! tenth of `capsa run`'s start-up. An export that no instantiation imports
//! and no alias names can be reached by nothing, so it goes; the code, the
//! function table and the memory snapshot are untouched.
//!
//! Anything this pass does not follow (nested components, modules imported
//! or exported by the component, an unparsable input, a result that does not
//! validate) leaves the component as it was.

use crate::component::{CoreInstance, Wiring, leb128, push_section, rebuild};
use std::collections::{HashMap, HashSet};
use wasmparser::{Parser, Payload};

/// What pruning did, for the build's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub exports_before: usize,
    pub exports_after: usize,
}

/// The component without its unreachable core exports, or `None` where it
/// is left as it was.
pub fn prune_exports(component: &[u8]) -> Option<(Vec<u8>, Pruned)> {
    let wiring = Wiring::read(component)?;
    let used = used(component, &wiring)?;
    let mut stats = Pruned::default();
    let out = rebuild(component, &wiring, |module, data| {
        let Some(used) = used.get(&module) else {
            return Some(None);
        };
        let (bytes, before, after) = prune_module(data, used)?;
        stats.exports_before += before;
        stats.exports_after += after;
        Some(Some(bytes))
    })?;
    Some((out, stats))
}

/// For each core module that the component instantiates, the names of its
/// exports that are read.
fn used(component: &[u8], wiring: &Wiring) -> Option<HashMap<u32, HashSet<String>>> {
    let mut used: HashMap<u32, HashSet<String>> = HashMap::new();
    for instance in &wiring.instances {
        if let CoreInstance::Module(module, _) = instance {
            used.entry(*module).or_default();
        }
    }
    for (_, instance, name) in &wiring.aliases {
        // An alias of a bag of exports names what is already aliased.
        if let Some(module) = wiring.module_of(*instance) {
            used.entry(module).or_default().insert(name.clone());
        }
    }
    for instance in &wiring.instances {
        let CoreInstance::Module(module, with) = instance else {
            continue;
        };
        let bytes = &component[wiring.modules.get(*module as usize)?.clone()];
        for (from, field) in imports(bytes)? {
            let Some((_, instance)) = with.iter().find(|(name, _)| *name == from) else {
                continue;
            };
            if let Some(source) = wiring.module_of(*instance) {
                used.entry(source).or_default().insert(field);
            }
        }
    }
    Some(used)
}

/// A module's imports, as (module, field).
fn imports(module: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::ImportSection(reader) = payload.ok()? {
            for import in reader.into_imports() {
                let import = import.ok()?;
                out.push((import.module.to_string(), import.name.to_string()));
            }
        }
    }
    Some(out)
}

/// The module with only the `used` exports; and the counts before and after.
fn prune_module(module: &[u8], used: &HashSet<String>) -> Option<(Vec<u8>, usize, usize)> {
    let mut out = module[..8].to_vec();
    let (mut before, mut after) = (0, 0);
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload.ok()?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        let Payload::ExportSection(reader) = payload else {
            push_section(&mut out, id, &module[range]);
            continue;
        };
        let mut entries = Vec::new();
        let mut kept = 0u32;
        let mut items = reader.into_iter_with_offsets().peekable();
        while let Some(item) = items.next() {
            let (start, export) = item.ok()?;
            let end = match items.peek() {
                Some(Ok((next, _))) => *next,
                _ => range.end,
            };
            before += 1;
            if used.contains(export.name) {
                entries.extend_from_slice(module.get(start..end)?);
                kept += 1;
            }
        }
        after += kept as usize;
        let mut section = Vec::new();
        leb128(&mut section, kept);
        section.extend_from_slice(&entries);
        push_section(&mut out, id, &section);
    }
    Some((out, before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports_of(component: &[u8]) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for payload in Parser::new(0).parse_all(component) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                out.push(
                    reader
                        .into_iter()
                        .map(|e| e.unwrap().name.to_string())
                        .collect(),
                );
            }
        }
        out
    }

    const LINKED: &str = r#"(component
        (core module $lib
            (func (export "used_by_import") (result i32) i32.const 1)
            (func (export "used_by_alias") (result i32) i32.const 2)
            (func (export "unused") (result i32) i32.const 3)
            (memory (export "memory") 1))
        (core module $main
            (import "lib" "used_by_import" (func (result i32)))
            (import "lib" "memory" (memory 1))
            (func (export "run") (result i32) call 0))
        (core instance $lib (instantiate $lib))
        (core instance $main (instantiate $main (with "lib" (instance $lib))))
        (alias core export $lib "used_by_alias" (core func $f))
        (alias core export $main "run" (core func $run))
        (func (export "run") (result u32) (canon lift (core func $run)))
        (func (export "other") (result u32) (canon lift (core func $f)))
        (component $shim (import "f" (func (result u32))) (export "g" (func 0))))"#;

    #[test]
    fn keeps_what_an_import_or_alias_reads_and_drops_the_rest() {
        let component = wat::parse_str(LINKED).unwrap();
        let (pruned, stats) = prune_exports(&component).expect("pruned");
        assert_eq!(
            exports_of(&pruned),
            [
                vec!["used_by_import", "used_by_alias", "memory"],
                vec!["run"]
            ]
        );
        assert_eq!(
            stats,
            Pruned {
                exports_before: 5,
                exports_after: 4
            }
        );
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&pruned)
            .unwrap();
    }

    #[test]
    fn a_component_it_cannot_follow_is_left_alone() {
        let nested = r#"(component
            (core module $m (func (export "f")))
            (component (alias outer 1 $m (core module))))"#;
        assert!(prune_exports(&wat::parse_str(nested).unwrap()).is_none());
        let exported = r#"(component
            (core module $m (func (export "f")) (func (export "g")))
            (export "m" (core module $m)))"#;
        assert!(prune_exports(&wat::parse_str(exported).unwrap()).is_none());
        let bagged = r#"(component
            (core module $m (func (export "f")) (func (export "g")))
            (core instance (instantiate $m))
            (instance $bag (export "m" (core module $m)))
            (export "bag" (instance $bag)))"#;
        assert!(prune_exports(&wat::parse_str(bagged).unwrap()).is_none());
        assert!(prune_exports(b"\0asm\x01\0\0\0").is_none());
        assert!(prune_exports(b"not wasm").is_none());
    }
}
