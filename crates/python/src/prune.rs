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

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use wasmparser::{
    ComponentAlias, ComponentExternalKind, Instance, InstantiationArgKind, Parser, Payload,
};

/// What pruning did, for the build's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub exports_before: usize,
    pub exports_after: usize,
}

/// The component without its unreachable core exports, or `None` where it
/// is left as it was.
pub fn prune_exports(component: &[u8]) -> Option<(Vec<u8>, Pruned)> {
    let plan = Plan::read(component)?;
    let mut out = component[..8].to_vec();
    let mut stats = Pruned::default();
    let mut module = 0;
    for (id, range) in &plan.sections {
        let data = &component[range.clone()];
        if *id == MODULE_SECTION {
            let used = plan.used.get(&module);
            module += 1;
            if let Some(used) = used {
                let (bytes, before, after) = prune_module(data, used)?;
                stats.exports_before += before;
                stats.exports_after += after;
                push_section(&mut out, *id, &bytes);
                continue;
            }
        }
        push_section(&mut out, *id, data);
    }
    let features = wasmparser::WasmFeatures::all();
    wasmparser::Validator::new_with_features(features)
        .validate_all(&out)
        .ok()?;
    Some((out, stats))
}

const MODULE_SECTION: u8 = 1;

/// The component's top-level sections, and for each core module that the
/// component instantiates, the names of its exports that are read.
struct Plan {
    sections: Vec<(u8, Range<usize>)>,
    used: HashMap<u32, HashSet<String>>,
}

impl Plan {
    fn read(component: &[u8]) -> Option<Plan> {
        let mut sections = Vec::new();
        let mut modules: Vec<Range<usize>> = Vec::new();
        // Per core instance: the module it instantiates, if it does.
        let mut instances: Vec<Option<u32>> = Vec::new();
        // (module, [(import module name, core instance)]) per instantiation.
        let mut instantiations: Vec<(u32, Vec<(String, u32)>)> = Vec::new();
        let mut aliased: Vec<(u32, String)> = Vec::new();
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(component) {
            let payload = payload.ok()?;
            if depth > 0 {
                match payload {
                    Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
                    Payload::End(_) => depth -= 1,
                    // A nested component reaching a module outside it.
                    Payload::ComponentAliasSection(reader) => {
                        for alias in reader {
                            if let ComponentAlias::Outer { kind, .. } = alias.ok()?
                                && kind == wasmparser::ComponentOuterAliasKind::CoreModule
                            {
                                return None;
                            }
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match &payload {
                Payload::Version { encoding, .. }
                    if *encoding != wasmparser::Encoding::Component =>
                {
                    return None;
                }
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    modules.push(unchecked_range.clone());
                    depth += 1;
                }
                Payload::ComponentSection { .. } => depth += 1,
                Payload::InstanceSection(reader) => {
                    for instance in reader.clone() {
                        match instance.ok()? {
                            Instance::Instantiate { module_index, args } => {
                                let mut with = Vec::new();
                                for arg in args.iter() {
                                    if arg.kind != InstantiationArgKind::Instance {
                                        return None;
                                    }
                                    with.push((arg.name.to_string(), arg.index));
                                }
                                instances.push(Some(module_index));
                                instantiations.push((module_index, with));
                            }
                            Instance::FromExports(_) => instances.push(None),
                        }
                    }
                }
                Payload::ComponentAliasSection(reader) => {
                    for alias in reader.clone() {
                        match alias.ok()? {
                            ComponentAlias::CoreInstanceExport {
                                instance_index,
                                name,
                                ..
                            } => aliased.push((instance_index, name.to_string())),
                            ComponentAlias::InstanceExport { kind, .. } => {
                                if kind == ComponentExternalKind::Module {
                                    return None;
                                }
                            }
                            ComponentAlias::Outer { .. } => return None,
                        }
                    }
                }
                Payload::ComponentImportSection(reader) => {
                    for import in reader.clone() {
                        if matches!(import.ok()?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                            return None;
                        }
                    }
                }
                Payload::ComponentExportSection(reader) => {
                    for export in reader.clone() {
                        if export.ok()?.kind == ComponentExternalKind::Module {
                            return None;
                        }
                    }
                }
                // A module passed to a component, or put in a bag of exports
                // (which may be exported or passed on), is read by name there.
                Payload::ComponentInstanceSection(reader) => {
                    for instance in reader.clone() {
                        let passes_a_module = match instance.ok()? {
                            wasmparser::ComponentInstance::Instantiate { args, .. } => {
                                args.iter().any(|a| a.kind == ComponentExternalKind::Module)
                            }
                            wasmparser::ComponentInstance::FromExports(exports) => exports
                                .iter()
                                .any(|e| e.kind == ComponentExternalKind::Module),
                        };
                        if passes_a_module {
                            return None;
                        }
                    }
                }
                Payload::End(_) => break,
                _ => {}
            }
            if let Some(section) = payload.as_section() {
                sections.push(section);
            }
        }

        let module_of = |instance: u32| instances.get(instance as usize).copied().flatten();
        let mut used: HashMap<u32, HashSet<String>> = HashMap::new();
        for &(module, _) in &instantiations {
            used.entry(module).or_default();
        }
        for (instance, name) in aliased {
            // An alias of a bag of exports names what is already aliased.
            if let Some(module) = module_of(instance) {
                used.entry(module).or_default().insert(name);
            }
        }
        for (module, with) in &instantiations {
            let bytes = &component[modules.get(*module as usize)?.clone()];
            for (from, field) in imports(bytes)? {
                let Some((_, instance)) = with.iter().find(|(name, _)| *name == from) else {
                    continue;
                };
                if let Some(source) = module_of(*instance) {
                    used.entry(source).or_default().insert(field);
                }
            }
        }
        Some(Plan { sections, used })
    }
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

fn push_section(out: &mut Vec<u8>, id: u8, data: &[u8]) {
    out.push(id);
    leb128(
        out,
        u32::try_from(data.len()).expect("a section is under 4 GiB"),
    );
    out.extend_from_slice(data);
}

fn leb128(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
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
