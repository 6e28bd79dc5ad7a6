#!/bin/bash
# The README's SmolLM2-135M-Instruct in-context learning table: every command of it, one after another
# (about an hour on 2 CPU threads). Results: runs/icl/NAME.json, NAME.png and NAME.log; seconds per command in
# runs/icl/times.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PRETRAINER=${PRETRAINER:-.venv/bin/pretrainer}
OUT=runs/icl
MODEL=$OUT/smollm2
mkdir -p $OUT
[ -d $MODEL ] || $PRETRAINER convert smollm2 $MODEL
run() {
    local name=$1 start=$SECONDS
    shift
    $PRETRAINER prompt $MODEL "$@" --out $OUT/$name.json > $OUT/$name.log 2>&1
    echo "$name $((SECONDS - start)) s" >> $OUT/times.txt
}
run tweets tweets-sentiment --shots 0,1,4,8 --seeds 3 --limit 300
run coin coin-flip --shots 0,1,4,8 --seeds 3 --limit 100
run addition addition --shots 0,1,4,8 --seeds 3 --limit 50 --max-new-tokens 8
run coin-cot coin-flip --shots 1,4,8 --seeds 3 --limit 50 --cot --max-new-tokens 64
run addition-cot addition --shots 1,4,8 --seeds 3 --limit 50 --cot --max-new-tokens 96
run coin-zs coin-flip --zero-shot-cot --limit 50 --max-new-tokens 64
run addition-zs addition --zero-shot-cot --limit 50 --max-new-tokens 96
run coin-sc coin-flip --shots 4 --cot --self-consistency 5 --temperature 0.7 --limit 50 --max-new-tokens 64
run addition-sc addition --shots 4 --cot --self-consistency 5 --temperature 0.7 --limit 50 --max-new-tokens 96
