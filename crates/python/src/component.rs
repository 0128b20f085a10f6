//! The top level of a component, as the passes over its core modules read
//! it: which module each core instance instantiates, with what, and what
//! the component's aliases name.

use std::collections::HashMap;
use std::ops::Range;
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ExternalKind, Instance, InstantiationArgKind, Parser,
    Payload,
};

pub const MODULE_SECTION: u8 = 1;

pub enum CoreInstance {
    /// A module instantiated with (import module name, core instance).
    Module(u32, Vec<(String, u32)>),
    /// A bag of exports: name -> (kind, index in the core index space).
    Bag(HashMap<String, (ExternalKind, u32)>),
}

/// A component's top level, for a pass that rewrites its core modules in
/// place. `None` from [`Wiring::read`] where a module could be seen from
/// outside the component (imported, exported, passed to or reached from a
/// nested component), which such a pass must not change.
pub struct Wiring {
    pub sections: Vec<(u8, Range<usize>)>,
    /// Each top-level module's bytes.
    pub modules: Vec<Range<usize>>,
    pub instances: Vec<CoreInstance>,
    /// Each alias of a core instance's export: (kind, core instance, name).
    pub aliases: Vec<(ExternalKind, u32, String)>,
}

impl Wiring {
    pub fn read(component: &[u8]) -> Option<Wiring> {
        let mut w = Wiring {
            sections: Vec::new(),
            modules: Vec::new(),
            instances: Vec::new(),
            aliases: Vec::new(),
        };
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
                    w.modules.push(unchecked_range.clone());
                    depth += 1;
                }
                Payload::ComponentSection { .. } => depth += 1,
                Payload::InstanceSection(reader) => {
                    for instance in reader.clone() {
                        w.instances.push(match instance.ok()? {
                            Instance::Instantiate { module_index, args } => {
                                let mut with = Vec::new();
                                for arg in args.iter() {
                                    if arg.kind != InstantiationArgKind::Instance {
                                        return None;
                                    }
                                    with.push((arg.name.to_string(), arg.index));
                                }
                                CoreInstance::Module(module_index, with)
                            }
                            Instance::FromExports(exports) => CoreInstance::Bag(
                                exports
                                    .iter()
                                    .map(|e| (e.name.to_string(), (e.kind, e.index)))
                                    .collect(),
                            ),
                        });
                    }
                }
                Payload::ComponentAliasSection(reader) => {
                    for alias in reader.clone() {
                        match alias.ok()? {
                            ComponentAlias::CoreInstanceExport {
                                kind,
                                instance_index,
                                name,
                            } => w.aliases.push((kind, instance_index, name.to_string())),
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
                // (which may be exported or passed on), is seen from outside.
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
                w.sections.push(section);
            }
        }
        Some(w)
    }

    /// The module core instance `instance` instantiates, if it does.
    pub fn module_of(&self, instance: u32) -> Option<u32> {
        match self.instances.get(instance as usize)? {
            CoreInstance::Module(m, _) => Some(*m),
            CoreInstance::Bag(_) => None,
        }
    }

    /// The core global index space: (core instance, export name) per index.
    pub fn globals(&self) -> Vec<(u32, &str)> {
        self.aliases
            .iter()
            .filter(|(kind, _, _)| *kind == ExternalKind::Global)
            .map(|(_, instance, name)| (*instance, name.as_str()))
            .collect()
    }
}

/// The component rebuilt with module `i`'s section replaced by
/// `replace(i, bytes)` where that gives one.
pub fn rebuild(
    component: &[u8],
    wiring: &Wiring,
    mut replace: impl FnMut(u32, &[u8]) -> Option<Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    let mut out = component[..8].to_vec();
    let mut module = 0;
    for (id, range) in &wiring.sections {
        let data = &component[range.clone()];
        if *id == MODULE_SECTION {
            let new = replace(module, data)?;
            module += 1;
            if let Some(new) = new {
                push_section(&mut out, *id, &new);
                continue;
            }
        }
        push_section(&mut out, *id, data);
    }
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .ok()?;
    Some(out)
}

pub fn push_section(out: &mut Vec<u8>, id: u8, data: &[u8]) {
    out.push(id);
    leb128(
        out,
        u32::try_from(data.len()).expect("a section is under 4 GiB"),
    );
    out.extend_from_slice(data);
}

pub fn leb128(out: &mut Vec<u8>, mut value: u32) {
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

/// A constant expression made only of `i32.const`, globals `global` knows
/// the value of, and i32 arithmetic, evaluated; `None` for anything else.
pub fn evaluate_i32(
    expr: &wasmparser::ConstExpr,
    global: impl Fn(u32) -> Option<i32>,
) -> Option<i32> {
    use wasmparser::Operator;
    let mut stack: Vec<i32> = Vec::new();
    for op in expr.get_operators_reader() {
        let op = op.ok()?;
        match op {
            Operator::I32Const { value } => stack.push(value),
            Operator::GlobalGet { global_index } => stack.push(global(global_index)?),
            Operator::I32Add | Operator::I32Sub | Operator::I32Mul => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(match op {
                    Operator::I32Add => a.wrapping_add(b),
                    Operator::I32Sub => a.wrapping_sub(b),
                    _ => a.wrapping_mul(b),
                });
            }
            Operator::End => {}
            _ => return None,
        }
    }
    match stack[..] {
        [value] => Some(value),
        _ => None,
    }
}
