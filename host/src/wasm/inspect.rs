//! What a guest file is, read before it is compiled: a component, not an
//! empty file, a core module or something else; which `wasi:http` it
//! exports ([`Wasi`]); and the linear memory its modules need at start,
//! which the memory cap must allow.

use std::fmt;

/// Which `wasi:http` a component serves, and so which engine runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wasi {
    /// `wasi:http/incoming-handler@0.2.x`: one call at a time per instance.
    P2,
    /// `wasi:http/handler@0.3.x`: native async, several requests at once
    /// per instance.
    P3,
}

impl Wasi {
    /// A word for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Wasi::P2 => "p2",
            Wasi::P3 => "p3",
        }
    }
}

/// The first bytes of every WebAssembly binary.
const MAGIC: &[u8; 4] = b"\0asm";
/// The version and layer fields of a core module (version 1, layer 0).
const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];

/// Why a file is not a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotComponent {
    /// It has no bytes.
    Empty,
    /// A core module: WebAssembly, but without the component model's
    /// interfaces.
    CoreModule,
    /// Not WebAssembly at all.
    NotWasm,
}

impl fmt::Display for NotComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotComponent::Empty => {
                "the file is empty, not a WebAssembly component: give the .wasm a wasi:http \
                 toolchain built (cargo build --target wasm32-wasip2, componentize-py, \
                 componentize-js)"
            }
            NotComponent::CoreModule => {
                "the file is a core WebAssembly module, not a component: build it for \
                 wasm32-wasip2 (not wasm32-wasip1 or wasm32-unknown-unknown), or wrap it with \
                 `wasm-tools component new`"
            }
            NotComponent::NotWasm => {
                "the file is not WebAssembly (it does not start with \\0asm): give the \
                 component's .wasm file"
            }
        })
    }
}

/// Checks that `bytes` are a component in the binary format, or WAT text
/// (which wasmtime reads as well).
pub fn check_component(bytes: &[u8]) -> Result<(), NotComponent> {
    if bytes.is_empty() {
        return Err(NotComponent::Empty);
    }
    if let Some(rest) = bytes.strip_prefix(MAGIC) {
        return match rest.get(..4) {
            Some(version) if version == CORE_MODULE => Err(NotComponent::CoreModule),
            // A component, or a binary wasmtime will say more about.
            _ => Ok(()),
        };
    }
    if is_text(bytes) {
        return Ok(());
    }
    Err(NotComponent::NotWasm)
}

/// Whether `bytes` look like WAT text: an S-expression, maybe after
/// blank space and comments.
fn is_text(bytes: &[u8]) -> bool {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => return false,
    };
    text.lines()
        .map(str::trim_start)
        .find(|line| !line.is_empty() && !line.starts_with(";;"))
        .is_some_and(|line| line.starts_with('('))
}

/// Bytes the largest linear memory of any module in the component `bytes`
/// has at start, or `None` for WAT text or a binary that does not parse
/// (wasmtime reports that when it compiles it).
pub fn initial_memory(bytes: &[u8]) -> Option<u64> {
    if !bytes.starts_with(MAGIC) {
        return None;
    }
    let mut largest = 0_u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            wasmparser::Payload::MemorySection(memories) => {
                for memory in memories {
                    let memory = memory.ok()?;
                    let size = memory.initial.saturating_mul(u64::from(memory.page_size()));
                    largest = largest.max(size);
                }
            }
            wasmparser::Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if let wasmparser::TypeRef::Memory(memory) = import.ok()?.ty {
                        let size = memory.initial.saturating_mul(u64::from(memory.page_size()));
                        largest = largest.max(size);
                    }
                }
            }
            _ => {}
        }
    }
    Some(largest)
}

/// Which `wasi:http` handler the component `bytes` exports: WASIp3 when
/// one of its own exports is `wasi:http/handler@0.3.x`, WASIp2 otherwise
/// (linking then says whether it exports `incoming-handler@0.2.x`). WAT
/// text, and a binary that does not parse, are taken for WASIp2.
pub fn wasi_export(bytes: &[u8]) -> Wasi {
    if !bytes.starts_with(MAGIC) {
        return Wasi::P2;
    }
    // Nested modules and components have sections of their own: only the
    // outermost component's exports count.
    let mut depth = 0_usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::Version { .. }) => depth += 1,
            Ok(wasmparser::Payload::End(_)) => depth = depth.saturating_sub(1),
            Ok(wasmparser::Payload::ComponentExportSection(exports)) if depth == 1 => {
                for export in exports {
                    let Ok(export) = export else {
                        return Wasi::P2;
                    };
                    if export.name.name.starts_with(P3_HANDLER) {
                        return Wasi::P3;
                    }
                }
            }
            Ok(_) => {}
            Err(_) => return Wasi::P2,
        }
    }
    Wasi::P2
}

/// The name of the WASIp3 handler export, up to its minor version.
const P3_HANDLER: &str = "wasi:http/handler@0.3.";

/// `bytes` in MiB, rounded up: what a `--guest-memory` must be to hold them.
pub fn mib_to_hold(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_components_say_what_they_are() {
        assert_eq!(check_component(b""), Err(NotComponent::Empty));
        assert_eq!(
            check_component(b"\0asm\x01\0\0\0"),
            Err(NotComponent::CoreModule)
        );
        assert_eq!(check_component(b"#!/bin/sh\n"), Err(NotComponent::NotWasm));
        assert_eq!(
            check_component(&[0xff, 0xfe, 0, 1]),
            Err(NotComponent::NotWasm)
        );
        assert_eq!(check_component(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert_eq!(check_component(b";; a guest\n(component)\n"), Ok(()));
    }

    #[test]
    fn the_largest_initial_memory_of_any_module_is_found() {
        let component = wat::parse_str(
            "(component
               (core module (memory 2))
               (core module (memory 300 400))
               (core module (import \"m\" \"mem\" (memory 5))))",
        )
        .unwrap();
        assert_eq!(initial_memory(&component), Some(300 << 16));
        assert_eq!(initial_memory(b"(component)"), None);
        assert_eq!(mib_to_hold(300 << 16), 19);
        assert_eq!(mib_to_hold(16 << 20), 16);
    }
}
