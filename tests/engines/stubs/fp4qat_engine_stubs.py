"""Import stubs for running the serving engines' loader code on the CPU (tests/engines/).

A module whose top-level package is in the set given to install() imports as an empty package whose
every attribute is a dummy class (calling it, subscripting it, `|`-ing it work; it is falsy and
iterates as empty). The finder is appended to sys.meta_path, so a really installed package always
wins over its stub. Which packages each engine needs stubbed, and why, is at the top of
tests/engines/engine_check.py.

torchvision-0.26.0.dist-info/ (beside this file; the folder is put on sys.path): transformers
asks importlib.metadata for the version of every package it finds importable; the stubbed
torchvision has no distribution, and transformers then fails on InvalidVersion('N/A').
"""
import importlib.abc
import importlib.machinery
import sys
import types


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _make(name)

    def __getitem__(cls, item):
        return cls

    def __or__(cls, other):
        return cls

    def __ror__(cls, other):
        return cls

    def __iter__(cls):
        return iter(())

    def __bool__(cls):
        return False


def _make(name):
    return _StubMeta(name, (object,), {"__init__": lambda self, *a, **k: None,
                                       "__call__": lambda self, *a, **k: None})


class StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        v = _make(name)
        setattr(self, name, v)
        return v


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)
        self.hits = []  # the stubbed modules actually imported, for the test's log

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            self.hits.append(fullname)
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = StubModule(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


def install(roots):
    f = StubFinder(roots)
    sys.meta_path.append(f)
    return f


class _Hider(importlib.abc.MetaPathFinder):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by fp4qat_engine_stubs)", name=fullname)
        return None


def hide(roots):
    """Make installed packages unimportable, as if absent (first on sys.meta_path)."""
    sys.meta_path.insert(0, _Hider(roots))
