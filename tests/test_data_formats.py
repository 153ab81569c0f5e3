"""What every registered dataset format promises, checked for each entry of the registry
(``FORMATS``), so a new format is held to it without being added to a list here.

A format registers its reader with the keys its entries must have, each with what it holds, and
optionally a check of their values; the workflow runs those checks for every dataset when the
Snakefile loads, so they must read no file. Needs no data, no network and no ``../shared``.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import io
import os
import re

import pytest

from medtransfer.data import FORMATS, check_entry
from medtransfer.data.raw import ENTRY_CHECKS, REQUIRED_KEYS
from medtransfer.errors import ConfigError

NAMES = FORMATS.names()
REQUIRED = [(fmt, key) for fmt in NAMES for key in REQUIRED_KEYS.get(fmt, {})]


@pytest.mark.parametrize("fmt", NAMES)
def test_a_format_is_a_reader_in_a_module_of_the_formats_package_that_documents_it(fmt):
    read = FORMATS.get(fmt)
    assert list(inspect.signature(read).parameters) == ["name", "entry"]
    module = importlib.import_module(read.__module__)
    assert module.__name__.startswith("medtransfer.data.formats.")
    assert module.__name__ != "medtransfer.data.formats.common"
    assert f"``{fmt}``" in module.__doc__  # the module's docstring is where a user reads the entry's keys


@pytest.mark.parametrize("fmt", NAMES)
def test_a_format_registers_its_required_keys_each_with_what_it_holds(fmt):
    assert fmt in REQUIRED_KEYS, f"{fmt} was registered without register_format"
    for key, holds in REQUIRED_KEYS[fmt].items():
        assert isinstance(key, str) and isinstance(holds, str) and holds.strip()


@pytest.mark.parametrize("fmt,key", REQUIRED, ids=[f"{fmt}-{key}" for fmt, key in REQUIRED])
def test_a_missing_required_key_stops_the_entry_check_naming_the_key_and_what_it_holds(fmt, key):
    # every other required key present (with values no format would accept): the missing key is
    # reported first, before the format's own check looks at any value
    entry = {"format": fmt, **{other: 64 for other in REQUIRED_KEYS[fmt] if other != key}}
    with pytest.raises(ConfigError) as error:
        check_entry("mine", entry)
    assert str(error.value) == f"datasets.mine: missing key '{key}' ({REQUIRED_KEYS[fmt][key]})"


@pytest.mark.parametrize("fmt", NAMES)
def test_the_entry_check_reads_no_file_and_fails_only_with_a_config_error(fmt, monkeypatch, tmp_path):
    touched: list[str] = []

    def recording(function):
        def wrapper(path, *args, **kwargs):
            touched.append(f"{function.__name__}({path!r})")
            return function(path, *args, **kwargs)
        return wrapper

    entry = {"format": fmt, **{key: 64 for key in REQUIRED_KEYS[fmt]}}
    if "root" in entry:
        entry["root"] = str(tmp_path / "missing")
    for target, name in ((builtins, "open"), (io, "open"), (os, "stat"), (os, "listdir"), (os, "scandir")):
        monkeypatch.setattr(target, name, recording(getattr(target, name)))
    try:
        check_entry("mine", entry)
    except ConfigError:
        pass  # a value the format rejects (64 is no MedMNIST flag): what the check is for
    finally:
        monkeypatch.undo()
    assert touched == [], f"the {fmt} entry check {'with' if fmt in ENTRY_CHECKS else 'without'} a value check " \
                          f"touched files: {touched}"


# --- every key a reader needs is asked for when the workflow plans ---------------------------------

def keys_the_reader_reads(fmt: str) -> dict[str, str]:
    """Keys the format's reader reads from ``entry`` without a default, found in its source: the
    reader and the functions of its module it calls, transitively. ``require(entry, "key")`` and
    ``entry["key"]`` read a key; the decoding keys (``decoding_keys``, ``check_decoding_keys``)
    need ``size``. Maps each key to how it is read."""
    read = FORMATS.get(fmt)
    module = importlib.import_module(read.__module__)
    functions = {node.name: node for node in ast.parse(inspect.getsource(module)).body
                 if isinstance(node, ast.FunctionDef)}
    found: dict[str, str] = {}
    todo, seen = [read.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                callee = node.func.id
                if callee in functions:
                    todo.append(callee)
                elif callee == "require" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    found.setdefault(node.args[1].value, f"require in {name}")
                elif callee in ("decoding_keys", "check_decoding_keys"):
                    found.setdefault("size", f"{callee} in {name}")
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Name)
                  and node.value.id == "entry" and isinstance(node.slice, ast.Constant)):
                found.setdefault(node.slice.value, f"entry[...] in {name}")
    return found


# Keys a reader reads that its format does not register as required, each with the entry (every
# other key valid) whose check must ask for it and the message, or None with why it needs no check.
# Written from reading the readers: a new key read without a default must be registered or land here.
NOT_REGISTERED = {
    ("masks", "image_column"): ({"format": "masks", "root": "/d", "size": 64, "file": "pairs.csv",
                                 "mask_column": "mask"}, "datasets.mine: missing key 'image_column'"),
    ("masks", "mask_column"): ({"format": "masks", "root": "/d", "size": 64, "file": "pairs.csv",
                                "image_column": "image"}, "datasets.mine: missing key 'mask_column'"),
    ("masks", "file"): None,  # read only when given: without it the masks are folders
    ("csv", "label_column"): ({"format": "csv", "root": "/d", "file": "l.csv", "path_column": "p", "size": 64},
                              "datasets.mine: give exactly one of 'label_column'"),
    ("csv", "label_columns"): ({"format": "csv", "root": "/d", "file": "l.csv", "path_column": "p", "size": 64},
                               "datasets.mine: give exactly one of 'label_column'"),
    ("npz", "md5"): None,  # read only when given
    ("cbis_ddsm", "images"): None,  # read only when given
}


@pytest.mark.parametrize("fmt", NAMES)
def test_every_key_the_reader_reads_without_a_default_is_asked_for_by_the_entry_check(fmt):
    """So an entry the job would refuse for a missing key stops ``snakemake -n`` instead."""
    for key, how in keys_the_reader_reads(fmt).items():
        if key in REQUIRED_KEYS[fmt]:
            continue
        assert (fmt, key) in NOT_REGISTERED, (
            f"the {fmt} reader reads datasets.<name>.{key} ({how}), which its format does not register as "
            f"required: register it (register_format(..., required=...)) or check it in the entry check")
        if NOT_REGISTERED[fmt, key] is not None:
            entry, message = NOT_REGISTERED[fmt, key]
            with pytest.raises(ConfigError, match=re.escape(message)):
                check_entry("mine", entry)


def test_the_source_scan_finds_the_keys_it_is_meant_to():
    # the scan itself, on readers whose needs are known: a scan that found nothing would pass above
    assert {"root", "size", "file", "path_column", "label_column", "label_columns"} <= set(keys_the_reader_reads("csv"))
    assert {"root", "size"} <= set(keys_the_reader_reads("aptos2019"))
    assert {"task", "flag"} & set(keys_the_reader_reads("synthetic")) == {"task"}
