//! Makes the addresses that link CPython's libraries constants.
//!
//! componentize-py links libc, libpython and the runtime as shared
//! libraries: each reads the address of every global it shares with the
//! others (`GOT.mem`), of every function it takes the address of
//! (`GOT.func`) and where it was placed (`__memory_base`, `__table_base`)
//! from globals the component's main module defines and the library
//! imports. wasmtime reads an imported global through a pointer on every
//! use, so `PyFloat_CheckExact(x)` in CPython's bytecode loop costs two
//! dependent loads before the comparison. Once the component's snapshot is
//! made these addresses never change: the main module's globals hold them
//! as constants and nothing that can run writes them (the function of the
//! linker's `__init` module that set them is reached from no start function,
//! no export and no table, so it can never run again). Each such import becomes
//! a global of the library's own, immutable, with that constant, which the
//! compiler folds into the code.
//!
//! Anything this pass does not follow (nested components, modules imported
//! or exported by the component, an import that cannot be traced to a
//! constant, a write it cannot trace, an unparsable input, a result that
//! does not validate) leaves that global, or the whole component, as it
//! was.

use crate::component::{CoreInstance, Wiring, rebuild};
use std::collections::{BTreeMap, HashMap, HashSet};
use wasm_encoder::reencode::{self, Reencode};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

/// The component with its libraries' link addresses made constants, and
/// how many imported globals became constants; `None` where it is left as
/// it was.
pub fn fold_link_globals(component: &[u8]) -> Option<(Vec<u8>, usize)> {
    let wiring = Wiring::read(component)?;
    let modules: Vec<Module> = wiring
        .modules
        .iter()
        .map(|r| Module::read(&component[r.clone()]))
        .collect::<Option<_>>()?;
    let links = Links {
        wiring: &wiring,
        modules: &modules,
        globals: wiring.globals(),
    };
    let written = links.written()?;

    // Per module, the imports to fold; a module instantiated more than once
    // is folded only where every instantiation agrees.
    let mut folds: HashMap<u32, Option<BTreeMap<u32, i32>>> = HashMap::new();
    for (instance, inst) in wiring.instances.iter().enumerate() {
        let CoreInstance::Module(m, _) = inst else {
            continue;
        };
        let module = modules.get(*m as usize)?;
        let mut fold = BTreeMap::new();
        for (i, import) in module.imported.iter().enumerate() {
            let i = i as u32;
            // A global the module writes stays one it can write.
            if import.2.content_type != ValType::I32 || module.all_sets.contains(&i) {
                continue;
            }
            let Some(source) = links.resolve_import(instance as u32, i, 0) else {
                continue;
            };
            if written.contains(&source) {
                continue;
            }
            let Some(s) = wiring.module_of(source.0) else {
                continue;
            };
            if let Some(value) = modules[s as usize].constant(source.1) {
                fold.insert(i, value);
            }
        }
        folds
            .entry(*m)
            .and_modify(|f| {
                if f.as_ref() != Some(&fold) {
                    *f = None;
                }
            })
            .or_insert(Some(fold));
    }

    let total: usize = folds.values().flatten().map(BTreeMap::len).sum();
    if total == 0 {
        return None;
    }
    let out = rebuild(component, &wiring, |m, _| {
        match folds.get(&m).cloned().flatten() {
            Some(fold) if !fold.is_empty() => rewrite(modules.get(m as usize)?, fold).map(Some),
            _ => Some(None),
        }
    })?;
    Some((out, total))
}

/// A global defined by a module instance: (core instance, global index).
type Source = (u32, u32);

/// How the component's modules reach each other's globals.
struct Links<'a> {
    wiring: &'a Wiring,
    modules: &'a [Module<'a>],
    /// The component's core global index space.
    globals: Vec<(u32, &'a str)>,
}

impl Links<'_> {
    /// Where the global that core instance `instance` exports as `name`
    /// is defined.
    fn resolve_export(&self, instance: u32, name: &str, depth: u32) -> Option<Source> {
        if depth > 64 {
            return None;
        }
        match self.wiring.instances.get(instance as usize)? {
            CoreInstance::Module(m, _) => {
                let &(kind, g) = self.modules.get(*m as usize)?.exports.get(name)?;
                if kind != ExternalKind::Global {
                    return None;
                }
                self.resolve_global(instance, g, depth + 1)
            }
            CoreInstance::Bag(exports) => {
                let &(kind, g) = exports.get(name)?;
                if kind != ExternalKind::Global {
                    return None;
                }
                let &(from, name) = self.globals.get(g as usize)?;
                self.resolve_export(from, name, depth + 1)
            }
        }
    }

    /// Where global `g` of the module instance `instance` is defined.
    fn resolve_global(&self, instance: u32, g: u32, depth: u32) -> Option<Source> {
        let m = self.wiring.module_of(instance)?;
        if (g as usize) < self.modules.get(m as usize)?.imported.len() {
            self.resolve_import(instance, g, depth + 1)
        } else {
            Some((instance, g))
        }
    }

    /// Where the `i`th imported global of module instance `instance` is
    /// defined.
    fn resolve_import(&self, instance: u32, i: u32, depth: u32) -> Option<Source> {
        let CoreInstance::Module(m, args) = self.wiring.instances.get(instance as usize)? else {
            return None;
        };
        let (from, field, _) = self.modules.get(*m as usize)?.imported.get(i as usize)?;
        let (_, arg) = args.iter().find(|(name, _)| name == from)?;
        self.resolve_export(*arg, field, depth + 1)
    }

    /// Every global that code able to run may write; `None` if a write
    /// cannot be traced to the global it writes.
    fn written(&self) -> Option<HashSet<Source>> {
        let mut out = HashSet::new();
        for (instance, inst) in self.wiring.instances.iter().enumerate() {
            let CoreInstance::Module(m, _) = inst else {
                continue;
            };
            for &g in &self.modules.get(*m as usize)?.sets {
                out.insert(self.resolve_global(instance as u32, g, 0)?);
            }
        }
        Some(out)
    }
}

/// What this pass needs of one core module.
struct Module<'a> {
    bytes: &'a [u8],
    /// Imported globals in index order: (module, name, type).
    imported: Vec<(String, String, wasmparser::GlobalType)>,
    /// Defined globals: type, and the value of an `i32.const` initialiser.
    defined: Vec<(wasmparser::GlobalType, Option<i32>)>,
    exports: HashMap<String, (ExternalKind, u32)>,
    /// Globals written by code that can run.
    sets: HashSet<u32>,
    /// Globals written anywhere in its code.
    all_sets: HashSet<u32>,
}

impl<'a> Module<'a> {
    fn read(bytes: &'a [u8]) -> Option<Module<'a>> {
        let mut m = Module {
            bytes,
            imported: Vec::new(),
            defined: Vec::new(),
            exports: HashMap::new(),
            sets: HashSet::new(),
            all_sets: HashSet::new(),
        };
        let mut imported_funcs = 0u32;
        // Functions that can be entered from outside the module's own
        // calls: the start function, exports, anything put in a table or
        // whose reference is taken.
        let mut entries: Vec<u32> = Vec::new();
        // Per defined function: the globals it writes, the functions it calls.
        let mut bodies: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        let refs = |expr: &wasmparser::ConstExpr, entries: &mut Vec<u32>| -> Option<()> {
            for op in expr.get_operators_reader() {
                if let Operator::RefFunc { function_index } = op.ok()? {
                    entries.push(function_index);
                }
            }
            Some(())
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.ok()? {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.ok()?;
                        match import.ty {
                            TypeRef::Global(ty) => m.imported.push((
                                import.module.to_string(),
                                import.name.to_string(),
                                ty,
                            )),
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => imported_funcs += 1,
                            _ => {}
                        }
                    }
                }
                Payload::GlobalSection(reader) => {
                    for global in reader {
                        let global = global.ok()?;
                        refs(&global.init_expr, &mut entries)?;
                        let mut ops = global.init_expr.get_operators_reader();
                        let value = match (ops.read().ok()?, ops.read().ok()?) {
                            (Operator::I32Const { value }, Operator::End) if ops.eof() => {
                                Some(value)
                            }
                            _ => None,
                        };
                        m.defined.push((global.ty, value));
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export.ok()?;
                        if matches!(export.kind, ExternalKind::Func | ExternalKind::FuncExact) {
                            entries.push(export.index);
                        }
                        m.exports
                            .insert(export.name.to_string(), (export.kind, export.index));
                    }
                }
                Payload::StartSection { func, .. } => entries.push(func),
                Payload::TableSection(reader) => {
                    for table in reader {
                        if let wasmparser::TableInit::Expr(expr) = table.ok()?.init {
                            refs(&expr, &mut entries)?;
                        }
                    }
                }
                Payload::ElementSection(reader) => {
                    for element in reader {
                        match element.ok()?.items {
                            wasmparser::ElementItems::Functions(funcs) => {
                                for f in funcs {
                                    entries.push(f.ok()?);
                                }
                            }
                            wasmparser::ElementItems::Expressions(_, exprs) => {
                                for expr in exprs {
                                    refs(&expr.ok()?, &mut entries)?;
                                }
                            }
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    let (mut sets, mut calls) = (Vec::new(), Vec::new());
                    for op in body.get_operators_reader().ok()? {
                        match op.ok()? {
                            Operator::GlobalSet { global_index }
                            | Operator::GlobalAtomicSet { global_index, .. }
                            | Operator::GlobalAtomicRmwAdd { global_index, .. }
                            | Operator::GlobalAtomicRmwSub { global_index, .. }
                            | Operator::GlobalAtomicRmwAnd { global_index, .. }
                            | Operator::GlobalAtomicRmwOr { global_index, .. }
                            | Operator::GlobalAtomicRmwXor { global_index, .. }
                            | Operator::GlobalAtomicRmwXchg { global_index, .. }
                            | Operator::GlobalAtomicRmwCmpxchg { global_index, .. } => {
                                sets.push(global_index)
                            }
                            Operator::Call { function_index }
                            | Operator::ReturnCall { function_index } => calls.push(function_index),
                            Operator::RefFunc { function_index } => entries.push(function_index),
                            _ => {}
                        }
                    }
                    m.all_sets.extend(&sets);
                    bodies.push((sets, calls));
                }
                _ => {}
            }
        }
        // Whatever the entries reach by direct calls can run; nothing else can.
        let mut seen = vec![false; bodies.len()];
        while let Some(f) = entries.pop() {
            let Some(d) = f.checked_sub(imported_funcs) else {
                continue;
            };
            let (sets, calls) = bodies.get(d as usize)?;
            if std::mem::replace(&mut seen[d as usize], true) {
                continue;
            }
            m.sets.extend(sets);
            entries.extend(calls);
        }
        Some(m)
    }

    /// The value of defined global `g`, if it is an `i32.const`.
    fn constant(&self, g: u32) -> Option<i32> {
        let d = (g as usize).checked_sub(self.imported.len())?;
        let (ty, value) = self.defined.get(d)?;
        if ty.content_type != ValType::I32 {
            return None;
        }
        *value
    }
}

/// The module with the imported globals in `fold` turned into immutable
/// globals of its own holding their constants.
fn rewrite(module: &Module, fold: BTreeMap<u32, i32>) -> Option<Vec<u8>> {
    let imported = module.imported.len() as u32;
    let total = imported + module.defined.len() as u32;
    let kept = imported - fold.len() as u32;
    let mut map = Vec::with_capacity(total as usize);
    let (mut next_kept, mut next_folded) = (0, kept);
    for g in 0..imported {
        if fold.contains_key(&g) {
            map.push(next_folded);
            next_folded += 1;
        } else {
            map.push(next_kept);
            next_kept += 1;
        }
    }
    map.extend((imported..total).map(|g| g - imported + kept + fold.len() as u32));
    let mut re = Folder {
        map,
        fold,
        emitted: false,
    };
    let mut out = wasm_encoder::Module::new();
    re.parse_core_module(&mut out, Parser::new(0), module.bytes)
        .ok()?;
    Some(out.finish())
}

struct Folder {
    /// Old global index -> new.
    map: Vec<u32>,
    /// Old index of an imported global -> its constant.
    fold: BTreeMap<u32, i32>,
    /// Whether the folded globals are in the output yet.
    emitted: bool,
}

impl Folder {
    fn emit(&mut self, globals: &mut wasm_encoder::GlobalSection) {
        for value in self.fold.values() {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I32,
                    mutable: false,
                    shared: false,
                },
                &wasm_encoder::ConstExpr::i32_const(*value),
            );
        }
        self.emitted = true;
    }

    /// An initialiser made only of constants, folded globals and i32
    /// arithmetic, evaluated.
    fn evaluate(&self, expr: &wasmparser::ConstExpr) -> Option<i32> {
        crate::component::evaluate_i32(expr, |g| self.fold.get(&g).copied())
    }
}

impl Reencode for Folder {
    type Error = std::convert::Infallible;

    fn global_index(&mut self, global: u32) -> Result<u32, reencode::Error<Self::Error>> {
        self.map
            .get(global as usize)
            .copied()
            .ok_or(reencode::Error::InvalidConstExpr)
    }

    fn const_expr(
        &mut self,
        expr: wasmparser::ConstExpr,
    ) -> Result<wasm_encoder::ConstExpr, reencode::Error<Self::Error>> {
        match self.evaluate(&expr) {
            Some(value) => Ok(wasm_encoder::ConstExpr::i32_const(value)),
            None => reencode::utils::const_expr(self, expr),
        }
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let mut global = 0u32;
        for import in section.into_imports() {
            let import = import?;
            if let TypeRef::Global(_) = import.ty {
                global += 1;
                if self.fold.contains_key(&(global - 1)) {
                    continue;
                }
            }
            let ty = reencode::utils::entity_type(self, import.ty)?;
            imports.import(import.module, import.name, ty);
        }
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut wasm_encoder::GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        self.emit(globals);
        reencode::utils::parse_global_section(self, globals, section)
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<wasm_encoder::SectionId>,
        before: Option<wasm_encoder::SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        use wasm_encoder::SectionId::*;
        // A module with no globals of its own gets a global section where
        // one belongs.
        let past_globals = match before {
            None => true,
            Some(id) => matches!(id, Export | Start | Element | DataCount | Code | Data),
        };
        if !self.emitted && past_globals {
            let mut globals = wasm_encoder::GlobalSection::new();
            self.emit(&mut globals);
            module.section(&globals);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A main module holding a library's link addresses, the library
    /// reading them, and an `__init` module that wrote them (`INIT` is
    /// spliced in: how, if at all, its code can run).
    fn linked(init: &str, lib_extra: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
            (core module $main
                (memory (export "memory") 1)
                (global (export "lib:x") (mut i32) (i32.const 1234))
                (global (export "lib:memory_base") i32 (i32.const 4096))
                (global (export "sp") (mut i32) (i32.const 65536)))
            (core module $lib
                (import "env" "memory" (memory 1))
                (import "env" "__stack_pointer" (global $sp (mut i32)))
                (import "env" "__memory_base" (global $base i32))
                (import "GOT.mem" "x" (global $x (mut i32)))
                (global $here i32 (i32.add (global.get $base) (i32.const 8)))
                (data (global.get $base) "hi")
                (func (export "read") (result i32)
                    global.get $sp
                    i32.const 16
                    i32.sub
                    global.set $sp
                    global.get $x
                    global.get $here
                    i32.add)
                {lib_extra})
            (core module $init
                (import "env" "lib:x" (global $x (mut i32)))
                (func $set i32.const 7 global.set $x)
                {init})
            (core instance $main (instantiate $main))
            (alias core export $main "memory" (core memory $memory))
            (alias core export $main "sp" (core global $sp))
            (alias core export $main "lib:memory_base" (core global $base))
            (alias core export $main "lib:x" (core global $x))
            (core instance $env (export "memory" (memory $memory))
                (export "__stack_pointer" (global $sp))
                (export "__memory_base" (global $base)))
            (core instance $got (export "x" (global $x)))
            (core instance $lib (instantiate $lib
                (with "env" (instance $env)) (with "GOT.mem" (instance $got))))
            (core instance $init (instantiate $init (with "env" (instance $main))))
            (alias core export $lib "read" (core func $read))
            (func (export "read") (result u32) (canon lift (core func $read))))"#
        ))
        .unwrap()
    }

    /// Per module: its imported globals (module.name) and the constant
    /// initialisers of its defined globals.
    fn globals_of(component: &[u8]) -> Vec<(Vec<String>, Vec<Option<i32>>)> {
        let wiring = Wiring::read(component).unwrap();
        wiring
            .modules
            .iter()
            .map(|r| {
                let m = Module::read(&component[r.clone()]).unwrap();
                (
                    m.imported
                        .iter()
                        .map(|(a, b, _)| format!("{a}.{b}"))
                        .collect(),
                    m.defined.iter().map(|(_, v)| *v).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_link_address_nothing_can_write_becomes_a_constant() {
        let (folded, n) = fold_link_globals(&linked("", "")).expect("folded");
        assert_eq!(n, 2);
        let lib = &globals_of(&folded)[1];
        // The stack pointer is written, so it stays shared.
        assert_eq!(lib.0, ["env.__stack_pointer"]);
        // The folded two first, then the library's own, now a constant too.
        assert_eq!(lib.1, [Some(4096), Some(1234), Some(4104)]);
        // `__init` writes its import, so that one stays as it was.
        assert_eq!(globals_of(&folded)[2].0, ["env.lib:x"]);
    }

    #[test]
    fn a_write_that_can_run_keeps_the_global_shared() {
        for init in [
            "(start $set)",
            "(func (export \"run\") call $set)",
            "(table 1 funcref) (elem (i32.const 0) func $set)",
            "(global funcref (ref.func $set)) (func (export \"f\") (result funcref) ref.func $set)",
            "(table 1 funcref (ref.func $set))",
            "(func (export \"f\") i32.const 1 global.atomic.rmw.add seqcst $x drop)",
        ] {
            let (folded, n) = fold_link_globals(&linked(init, "")).expect(init);
            assert_eq!(n, 1, "{init}");
            assert_eq!(
                globals_of(&folded)[1].0,
                ["env.__stack_pointer", "GOT.mem.x"],
                "{init}"
            );
        }
    }

    #[test]
    fn a_module_writing_its_own_import_keeps_it() {
        let lib = "(func (export \"w\") i32.const 1 global.set $x)";
        let (folded, n) = fold_link_globals(&linked("", lib)).expect("folded");
        assert_eq!(n, 1);
        assert_eq!(
            globals_of(&folded)[1].0,
            ["env.__stack_pointer", "GOT.mem.x"]
        );
    }

    #[test]
    fn what_it_cannot_follow_is_left_alone() {
        let exported = r#"(component
            (core module $m (global (export "g") i32 (i32.const 1)))
            (export "m" (core module $m)))"#;
        assert!(fold_link_globals(&wat::parse_str(exported).unwrap()).is_none());
        let nothing =
            r#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#;
        assert!(fold_link_globals(&wat::parse_str(nothing).unwrap()).is_none());
        assert!(fold_link_globals(b"\0asm\x01\0\0\0").is_none());
        assert!(fold_link_globals(b"not wasm").is_none());
    }
}
