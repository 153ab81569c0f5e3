"""What every registered dataset format promises, checked for each entry of the registry
(``FORMATS``), so a new format is held to it without being added to a list here.

A format registers its reader with the keys its entries must have, each with what it holds, and
optionally a check of their values; the workflow runs those checks for every dataset when the
Snakefile loads, so they must read no file. Needs no data, no network and no ``../shared``.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import io
import os

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
