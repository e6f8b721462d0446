#!/usr/bin/env bash
# Where the AOTInductor fused encoder fails on the GPU image (session 7; device tool, carry
# .device/data/sentiment_config.json, ~230 s): bench/gpu/aoti_diag.py in three processes with
# faulthandler on: (a) GELU in the cuBLASLt epilogue, compile + load in one process; (b) tanh GELU
# after the GEMM, the same; (c) compile in one process, load in fresh ones (single-threaded runner,
# and the default one). Logs: $OUT/{a,b,c}.log.
set -u
export PYTHONFAULTHANDLER=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONDONTWRITEBYTECODE=1
D=bench/gpu/aoti_diag.py; T=/tmp/diag; mkdir -p $T
( timeout 200 python3 $D epilogue masked same 1 $T/a.pt2 > $OUT/a.log 2>&1; echo "rc $?" >> $OUT/a.log ) &
( timeout 200 python3 $D tanh masked same 1 $T/b.pt2 > $OUT/b.log 2>&1; echo "rc $?" >> $OUT/b.log ) &
( timeout 200 python3 $D epilogue masked compileonly 1 $T/c.pt2 > $OUT/c.log 2>&1; echo "rc $?" >> $OUT/c.log;
  timeout 60 python3 $D epilogue masked loadonly 1 $T/c.pt2 >> $OUT/c.log 2>&1; echo "rc $?" >> $OUT/c.log;
  timeout 60 python3 $D epilogue masked loadonly 0 $T/c.pt2 >> $OUT/c.log 2>&1; echo "rc $?" >> $OUT/c.log ) &
wait
for f in a b c; do echo "== $f"; grep -v "Warning\|warn\|cls.__new__" $OUT/$f.log | tail -30 | cut -c1-400; done
