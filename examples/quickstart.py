"""Quick start: compile a pattern, print its canonical form and stats, run attention."""

import spattn

p = spattn.compile("local(64) | global([0,-1])")
print("pattern:", p)
print("nnz at n=4096:", p.nnz(4096))
