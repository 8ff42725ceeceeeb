#!/usr/bin/env python3
"""Generate a deterministic C project (no network, no dependencies) for the build workload.

Usage: gen_cproj.py DIR [UNITS] [FUNCS]
Writes DIR/Makefile, DIR/src/uNN.c and DIR/src/main.c. `make -j2` builds DIR/build/app with
gcc -O2 -pipe (no temporary files, so /tmp inside vs outside does not matter). Each unit holds
FUNCS functions mixing loops, switch tables, structs and inlinable helpers, which keeps the
optimiser busy the way ordinary application code does.
"""
import os
import sys

d = sys.argv[1]
units = int(sys.argv[2]) if len(sys.argv) > 2 else 24
funcs = int(sys.argv[3]) if len(sys.argv) > 3 else 60
os.makedirs(os.path.join(d, "src"), exist_ok=True)

for u in range(units):
    out = ["#include <stdint.h>", "#include <string.h>", "#include <stdlib.h>", ""]
    out.append("struct rec%d { uint32_t a, b; uint64_t c; char name[24]; double w; };" % u)
    out.append(
        "static inline uint64_t mix%d(uint64_t x) { x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; "
        "x ^= x >> 33; return x * %dULL; }" % (u, 2 * u + 3)
    )
    for f in range(funcs):
        k = (u * 131 + f * 17) % 29 + 3
        out.append(
            f"""
uint64_t u{u}_f{f}(const uint8_t *buf, size_t n, struct rec{u} *r, int mode) {{
    uint64_t h = {k}ULL * 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < n; i++) {{
        switch ((buf[i] + mode) % 7) {{
        case 0: h += mix{u}(h ^ buf[i]); break;
        case 1: h ^= (h << {k % 13 + 1}) | buf[i]; break;
        case 2: r->a += (uint32_t)h; r->b ^= r->a >> 3; break;
        case 3: r->c = r->c * 31 + (h & 0xffff); break;
        case 4: r->w = r->w * 0.5 + (double)(h % 1000) / {k}.0; break;
        case 5: memcpy(r->name, buf + (i % (n > 24 ? n - 24 : 1)), n > 24 ? 24 : 0); break;
        default: h = mix{u}(h + i * {k});
        }}
    }}
    for (int j = 0; j < {k}; j++) {{
        h += (uint64_t)(r->w * j) ^ r->c;
        if (h & 1) h = (h >> 1) ^ 0xd800000000000000ULL; else h >>= 1;
    }}
    return h + r->a + r->b;
}}"""
        )
    out.append(
        "\nuint64_t unit%d(const uint8_t *buf, size_t n) {\n    struct rec%d r = {0};\n    uint64_t s = 0;" % (u, u)
    )
    for f in range(funcs):
        out.append("    s += u%d_f%d(buf, n, &r, %d);" % (u, f, f % 5))
    out.append("    return s;\n}")
    with open(os.path.join(d, "src", "u%02d.c" % u), "w") as fh:
        fh.write("\n".join(out) + "\n")

main = ["#include <stdint.h>", "#include <stdio.h>", "#include <stddef.h>"]
main += ["uint64_t unit%d(const uint8_t *, size_t);" % u for u in range(units)]
main.append("int main(void) {\n    uint8_t buf[256];\n    for (int i = 0; i < 256; i++) buf[i] = (uint8_t)(i * 7);")
main.append("    uint64_t s = 0;")
main += ["    s += unit%d(buf, sizeof buf);" % u for u in range(units)]
main.append('    printf("%llu\\n", (unsigned long long)s);\n    return 0;\n}')
with open(os.path.join(d, "src", "main.c"), "w") as fh:
    fh.write("\n".join(main) + "\n")

with open(os.path.join(d, "Makefile"), "w") as fh:
    fh.write(
        """CC ?= gcc
CFLAGS ?= -O2 -pipe -Wall
SRCS := $(wildcard src/*.c)
OBJS := $(patsubst src/%.c,build/%.o,$(SRCS))

build/app: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $^

build/%.o: src/%.c | build
\t$(CC) $(CFLAGS) -c -o $@ $<

build:
\tmkdir -p build

clean:
\trm -rf build
.PHONY: clean
"""
    )
