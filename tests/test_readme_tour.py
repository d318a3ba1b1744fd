"""The README's Tour can be followed in order: every out/ file a command reads was written before it."""

import re
import shlex

from conftest import TESTS

README = (TESTS.parent / "README.md").read_text()
WRITES = ("-o", "--output", "--json", "--markdown", "--export-onnx")


def test_every_out_file_a_tour_command_reads_is_written_earlier():
    tour = README[README.index("## Tour"):]
    written: set[str] = set()
    for match in re.finditer(r"`effkit [^`]+`|^\$ effkit .+$", tour, re.M):
        args = shlex.split(match.group(0).strip("`").removeprefix("$ "))
        outputs = {args[i + 1] for i, a in enumerate(args[:-1]) if a in WRITES}
        for arg in args:
            if arg.startswith("out/") and arg not in outputs:
                assert any(arg == w or arg.startswith(w + "/") for w in written), \
                    f"{arg} is read by `{match.group(0)}` before any command writes it"
        written |= outputs
