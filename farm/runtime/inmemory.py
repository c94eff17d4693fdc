"""Rulesets compiled and loaded inside this process, with no files and no linker: the fast local path.

The rules module is compiled by llvmlite (the in-process compile path) and linked in memory with the
shared runtime object by llvmlite's MCJIT. The runtime object is compiled once per target and -O level
and kept in the object cache. Use it for local, immediate rewriting; artifacts to store or ship go
through ArtifactBuilder (a .so linked by ld.lld).
"""

from __future__ import annotations

from typing import Any

from farm.compiler import parallel
from farm.compiler.codegen.llvm import runtime_ir
from farm.compiler.toolchain import ObjectCache, emit_module, emit_object_in_process
from farm.compiler.tools import cache_key, tool_versions
from farm.errors import IncompatibleArtifact
from farm.lang.transduce import RuleSet
from farm.runtime.loader import NativeRuleset
from farm.targets import Target, host_can_run, missing_flags

# MCJIT places each object's sections wherever memory is free: in a long-running process (1 GiB thread stacks,
# many libraries) two of them can end up more than 2 GiB apart, past what the default (small) code model's 32-bit
# relocations reach (RuntimeDyldELF asserts and aborts the process). The large code model with absolute
# (static) relocations reaches anywhere; the toolchain compiles JIT objects so (farm/compiler/toolchain.py).
JIT_CODE = "large"


class InMemoryCompiler:
    def __init__(self, target: Target, opt_level: int, object_cache: ObjectCache) -> None:
        if target.name != "native" and not host_can_run(target):
            raise IncompatibleArtifact(f"cannot load {target.name} code into this process; the host lacks "
                                       f"{', '.join(missing_flags(target)) or target.arch}")
        self.target, self.opt_level = target, opt_level
        self.objects = object_cache
        self._runtime: bytes | None = None

    def load(self, ruleset: RuleSet) -> NativeRuleset:
        import llvmlite.binding as llvm

        objects = self._objects(ruleset)
        # The engine takes ownership of its target machine and module: a fresh pair for each engine.
        machine = llvm.Target.from_triple(self.target.triple).create_target_machine(
            cpu=self.target.cpu, features=self.target.features, opt=self.opt_level, reloc="static",
            codemodel=JIT_CODE)
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(f'target triple = "{self.target.triple}"'),
                                            machine)
        for data in objects:
            engine.add_object_file(llvm.ObjectFileRef.from_data(data))
        engine.finalize_object()
        return NativeRuleset.in_memory(engine.get_function_address, ruleset, keepalive=engine)

    def _objects(self, ruleset: RuleSet) -> list[bytes]:
        """The runtime's object and the ruleset's: generated, checked and compiled as a pipeline, and a large
        ruleset's chunks in worker processes too (farm/compiler/parallel.py)."""
        compiled, provided = parallel.compile_chunks(ruleset, self.target, self.opt_level, JIT_CODE, self._compile)
        return [self._runtime_object(runtime_ir(self.target.triple), provided),
                *(chunk.object_code for chunk in compiled)]

    def _runtime_object(self, text: str, provided: frozenset[str]) -> bytes:
        """The shared runtime: compiled once per target and -O level, kept on disk and in memory."""
        if self._runtime is None:
            key = cache_key(text, self.target, self.opt_level, tool_versions("inprocess") | {"code model": JIT_CODE})
            cached = self.objects.verified(key)  # MCJIT takes the bytes as they are: only the ones compiled
            if cached is not None:
                self._runtime = cached
            else:
                self._runtime = emit_object_in_process(text, self.target, self.opt_level, "runtime", provided,
                                                       JIT_CODE)[0]
                self.objects.put(key, self._runtime)
        return self._runtime

    def _compile(self, module: Any, name: str) -> bytes:
        """A module the load policy passed (farm/compiler/parallel.py checks each), compiled straight to memory; a
        ruleset's own modules are never written to disk."""
        return emit_module(module, self.target, self.opt_level, JIT_CODE)[0]
