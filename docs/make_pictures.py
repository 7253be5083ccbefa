"""Print the mask pictures used in the README's language reference.

    python docs/make_pictures.py            # markdown blocks on stdout

Each picture is the pattern's boolean mask at n = 8: row i is query i, column j is key j,
``#`` means query i may attend key j. Blocks are fenced ``text`` blocks with up to three
pictures side by side, each column ``WIDTH`` characters wide (tests/test_examples.py checks
every picture in the README against the reference masks).
"""

from __future__ import annotations

import spattn

N = 8
WIDTH = 22

GROUPS = [
    ["local(2)", "window(2, 1)", "causal"],
    ["stride(3)", "dilated(2, 2)", "block(3)"],
    ["fixed(4, 1)", "rows([0, -1])", "cols([0, -1])"],
    ["global([0, -1])", "sink(2)", "random(2, seed=0)"],
    ["full", "none", "local(1) | global([0])"],
    ["local(2) & causal", "local(3) - local(1)", "~block(4)"],
    ["longformer(1, [0])", "strided(3)", "streaming(1, 2)"],
]


def picture(text: str, n: int = N) -> list[str]:
    m = spattn.compile(text).to_dense(n)
    return [" ".join("#" if x else "." for x in row) for row in m]


def block(texts: list[str], n: int = N) -> str:
    pics = [picture(t, n) for t in texts]
    lines = ["".join(t.ljust(WIDTH) for t in texts).rstrip()]
    for r in range(n):
        lines.append("".join(p[r].ljust(WIDTH) for p in pics).rstrip())
    return "```text\n" + "\n".join(lines) + "\n```"


def main() -> None:
    for g in GROUPS:
        print(block(g))
        print()


if __name__ == "__main__":
    main()
