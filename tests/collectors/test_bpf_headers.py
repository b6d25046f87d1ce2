"""Counter slots are defined once, in bpf/ks_<tracer>.h: the BPF C includes the header and the
Python side parses it. Checked here: the parser reads what the C compiler sees, every slot
below the array size is named exactly once, no .bpf.c redefines one, and a header that lacks a
name the collector needs is one clear error."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from kernelsight import bpfsupport
from kernelsight.config import Settings
from kernelsight.exceptions import CollectorError

from conftest import need_root

SIZE = {"syscalls": "CNT_MAX", "sched": "CNT_MAX", "io": "DROP_SLOTS",
        "pagefaults": "DROP_SLOTS"}


def slots(name: str) -> dict[str, int]:
    names = importlib.import_module(f"kernelsight.collectors.{name}").SLOTS
    return bpfsupport.header_slots(Settings(), name, (*names, SIZE[name]))


@pytest.mark.parametrize("name", sorted(SIZE))
def test_each_slot_below_the_size_is_named_once(name: str) -> None:
    got = slots(name)
    size = got.pop(SIZE[name])
    assert sorted(got.values()) == list(range(size)), got  # distinct, no gap, in bounds
    # The collector knows every slot the header defines (none is silently ignored).
    header = (Settings().bpf_path / f"ks_{name}.h").read_text()
    prefix = SIZE[name].split("_")[0] + "_"
    defined = set(re.findall(rf"#define ({prefix}\w+)", header)) - {SIZE[name]}
    assert defined == set(got), (defined, got)


@pytest.mark.parametrize("name", sorted(SIZE))
def test_the_bpf_c_includes_the_header_and_defines_no_slot(name: str) -> None:
    src = (Settings().bpf_path / f"{name}.bpf.c").read_text()
    assert f'#include "ks_{name}.h"' in src
    for slot in slots(name):
        assert not re.search(rf"#\s*define\s+{slot}\b", src), slot


def test_parser_agrees_with_the_c_compiler() -> None:
    """Compile the headers with BCC and make the compiler check each value the parser read."""
    need_root()
    from bcc import BPF

    lines = []
    for name in sorted(SIZE):
        lines.append(f'#include "ks_{name}.h"')
        lines += [f'_Static_assert({k} == {v}, "{name} {k}");' for k, v in slots(name).items()]
        lines += [f"#undef {k}" for k in slots(name)]  # the next header reuses some names
    text = "\n".join(lines) + "\nint ks_probe(void *ctx) { return 0; }\n"
    BPF(text=text.encode(), cflags=[f"-I{Settings().bpf_path}"]).cleanup()
    # The same program with one value off by one must not compile (the check can fail).
    bad = text.replace("== 0,", "== 1,", 1)
    with pytest.raises(Exception):  # noqa: B017 - bcc raises a bare Exception
        BPF(text=bad.encode(), cflags=[f"-I{Settings().bpf_path}"])


def test_missing_or_unparsable_slot_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "ks_sched.h").write_text("#define CNT_MAP_FULL (1 << 0)\n#define CNT_MAX 1\n")
    with pytest.raises(CollectorError) as e:
        bpfsupport.header_slots(Settings(bpf_dir=str(tmp_path)), "sched", ("CNT_MAP_FULL",))
    assert "does not define CNT_MAP_FULL" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CollectorError, match="cannot read"):
        bpfsupport.header_slots(Settings(bpf_dir=str(tmp_path)), "io", ("DROP_SLOTS",))
    (tmp_path / "ks_io.h").write_text("# define DROP_A 0x1U /* c */\n#define DROP_B (2)\n")
    assert bpfsupport.header_slots(Settings(bpf_dir=str(tmp_path)), "io",
                                   ("DROP_A", "DROP_B")) == {"DROP_A": 1, "DROP_B": 2}
