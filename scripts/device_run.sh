#!/bin/bash
# One call on the device machine: install the carried wheels (.whl: llvmlite 0.50, sqlite-utils),
# record the GPU's state, then run the steps named in $@ (gpu-tests, profile, search3, bench-*).
# Everything lands in $OUT.   Usage: scripts/device_run.sh gpu-tests search3
set -o pipefail
# (once per machine: a second invocation running beside the first must not reinstall under it)
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; } || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,driver_version,temperature.gpu,power.draw --format=csv | tee $OUT/gpu.txt
python3 -c "import llvmlite, numpy, torch; print('llvmlite', llvmlite.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
# ncu's warp-stall reasons: average warps stalled for each, per issued instruction
STALLS=$(printf 'smsp__average_warps_issue_stalled_%s_per_issue_active.ratio,' barrier branch_resolving dispatch_stall \
  lg_throttle long_scoreboard math_pipe_throttle mio_throttle no_instruction not_selected selected short_scoreboard wait)
STALLS=${STALLS%,}
for step in "$@"; do
  echo "=== $step"
  case $step in
    gpu-tests) python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee $OUT/gpu_tests.log | tail -25 ;;
    gpu-tests-parallel) # the whole GPU tier (650 tests; 543 ran in 165 s on 14 workers, 2026-11-30) on $TESTS_N worker processes
               # (default 14; pytest-xdist is on the machine), at most $TESTS_S seconds (default 480)
               timeout ${TESTS_S:-480} python3 -m pytest -q -rs -p no:cacheprovider -p no:benchmark -n ${TESTS_N:-14} tests/gpu 2>&1 | tee $OUT/gpu_tests.log | tail -30 ;;
    cpu-tests) python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/gpu -x 2>&1 | tail -5 ;;
    gpu-tests-*) # (after gpu-tests-parallel: bash takes the first pattern that matches) the GPU tests whose names match the rest of the step (pytest -k)
               python3 -m pytest -q -p no:cacheprovider tests/gpu -k "${step#gpu-tests-}" 2>&1 \
                 | tee $OUT/gpu_tests_${step#gpu-tests-}.log | tail -25 ;;
    fuzz-tc-*) # fuzz-tc-N: N random tensor-core cases (tf32, bf16, f16), at most $FUZZ_S seconds (default 240)
               python3 -m nmgen.cli fuzz --cases ${step#fuzz-tc-} --dtypes tf32,bf16,f16 --seed 20261201 --quiet \
                 --time-limit ${FUZZ_S:-240} --json $OUT/fuzz_tc.json 2>&1 | tee $OUT/fuzz_tc.log | tail -25 ;;
    fuzz-*)    # fuzz-N: N random cases (every dtype, both arrays) from a fixed seed, at most $FUZZ_S seconds
               python3 -m nmgen.cli fuzz --cases ${step#fuzz-} --seed 20261130 --quiet --time-limit ${FUZZ_S:-240} \
                 --json $OUT/fuzz.json 2>&1 | tee $OUT/fuzz.log | tail -25 ;;
    sanitize)  # compute-sanitizer's memcheck, racecheck and synccheck on 50 fuzz cases each (small sizes)
               for tool in memcheck racecheck synccheck; do
                 timeout 75 compute-sanitizer --tool $tool --error-exitcode 3 --print-limit 20 \
                   python3 -m nmgen.cli fuzz --cases 50 --seed 7 --max-macs 3e7 --arrays numpy --quiet --time-limit 45 \
                   --json $OUT/sanitize_$tool.json > $OUT/sanitize_$tool.log 2>&1
                 echo "$tool: exit $? (3: the sanitizer found errors; 1: a fuzz case failed)"
                 grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases on" $OUT/sanitize_$tool.log | tail -3
               done ;;
    profile-*) # ncu on one launch of each case of scripts/cases/NAME.json: throughput, occupancy, stall reasons
               name=${step#profile-}
               ncu --clock-control none --section SpeedOfLight --section SchedulerStats --section Occupancy \
                   --section LaunchStats --section MemoryWorkloadAnalysis_Tables \
                   --metrics "$STALLS,smsp__inst_executed.sum,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,lts__t_sectors_srcunit_tex.sum" \
                   -k regex:nmspmm python3 scripts/cases.py scripts/cases/$name.json launch > $OUT/ncu_$name.txt 2>&1
               tail -5 $OUT/ncu_$name.txt ;;
    probe-*)   # tensor-core kernels of scripts/cases/NAME.json below the API, beside cuBLAS of their dtype,
               # at most $PROBE_S seconds (default 300): a kernel that hangs (2026-12-01: a deadlocked
               # cluster kernel took a whole 400 s call) is killed with what was printed before it kept
               name=${step#probe-}
               timeout ${PROBE_S:-300} python3 scripts/probe_mma.py scripts/cases/$name.json --json $OUT/probe_$name.json \
                 2>&1 | tee $OUT/probe_$name.log
               [ ${PIPESTATUS[0]} = 124 ] && echo "probe-$name: stopped after ${PROBE_S:-300} s (a hang?)" ;;
    kernel-probe-*) # a hand-written probe, scripts/probes/NAME.py (CUDA C built here: carry .probe), at most $PROBE_S s
               name=${step#kernel-probe-}
               timeout ${PROBE_S:-240} python3 scripts/probes/$name.py run $OUT/$name.json 2>&1 | tee $OUT/$name.log
               [ ${PIPESTATUS[0]} = 124 ] && echo "kernel-probe-$name: stopped after ${PROBE_S:-240} s (a hang?)" ;;
    l2-copy-rate) # what an SM pulls from L2 into shared memory by cp.async and by bulk copies (no arithmetic)
               timeout 150 python3 scripts/probes/l2_copy_rate.py --json $OUT/l2_copy_rate.json 2>&1 | tee $OUT/l2_copy_rate.log ;;
    ncu-probe-*) # ncu on the first launch of each tensor-core case of scripts/cases/NAME.json (probe_mma.py)
               name=${step#ncu-probe-}
               ncu --clock-control none --section SpeedOfLight --section SchedulerStats --section Occupancy \
                   --section LaunchStats --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis \
                   --metrics "$STALLS,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,lts__t_sectors_srcunit_tex.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" \
                   --kernel-id ::regex:nmspmm:1 \
                   python3 scripts/probe_mma.py scripts/cases/$name.json > $OUT/ncu_$name.txt 2>&1
               grep -E "nmspmm|Duration|Throughput|Pipe|Bank|Occupancy|Registers|stalled|hmma|Issued|Warp Cycles" $OUT/ncu_$name.txt | head -120 ;;
    time-*)    # warm timings of every case of scripts/cases/NAME.json
               name=${step#time-}
               python3 scripts/cases.py scripts/cases/$name.json time --json $OUT/time_$name.json 2>&1 | tee $OUT/time_$name.log ;;
    search3)   # issue 3: exhaustive searches on its three problems, then the model's quality
               export NMGEN_DB=$OUT/tuning.db
               [ -f .carry/tuning.db ] && cp .carry/tuning.db $NMGEN_DB && chmod u+w $NMGEN_DB   # resume
               for pr in "4096x4096x4096 16:32" "4096x4096x4096 4:32" "256x2048x2048 8:32"; do
                 set -- $pr
                 python3 -m nmgen.cli search --shape $1 --pattern $2 --vector 32 --strategy exhaustive --quiet \
                   2>&1 | tee -a $OUT/search.log | tail -16
               done
               python3 -m nmgen.cli db quality --json $OUT/quality.json 2>&1 | tee $OUT/quality.txt ;;
    search-small-col)   # exhaustive on the smallest paper6 shape, A column-major
               export NMGEN_DB=$OUT/tuning.db
               [ -f .carry/tuning.db ] && [ ! -f $NMGEN_DB ] && cp .carry/tuning.db $NMGEN_DB && chmod u+w $NMGEN_DB
               for pat in 16:32 12:32 8:32; do
                 python3 -m nmgen.cli search --shape 256x2048x2048 --pattern $pat --vector 32 --a-major col \
                   --strategy exhaustive --quiet 2>&1 | tee -a $OUT/search_small.log | tail -4
               done ;;
    refine-*)  # refine-SUITE-ROWCOL: the tuner's local search (and re-timing) on the suite's recorded problems
               spec=${step#refine-}; suite=${spec%-*}; am=${spec##*-}
               export NMGEN_DB=$OUT/tuning.db
               [ -f .carry/tuning.db ] && [ ! -f $NMGEN_DB ] && cp .carry/tuning.db $NMGEN_DB && chmod u+w $NMGEN_DB
               python3 -c "from nmgen.bench import SUITES, PAPER_PATTERNS as P
for M, N, K in SUITES['$suite']:
    for p in P: print(f'{M}x{N}x{K} {p} 32')" > /tmp/shapes_$suite.txt
               python3 -m nmgen.cli search --shapes /tmp/shapes_$suite.txt --a-major $am --topk 24 --quiet \
                 2>&1 | tee $OUT/refine_${suite}_${am}.log | tail -8 ;;
    bench-*)   # bench-SUITE-ROWCOL: tune what the database lacks, then nmgen vs cuBLAS in one run
               spec=${step#bench-}; suite=${spec%-*}; am=${spec##*-}
               export NMGEN_DB=$OUT/tuning.db
               [ -f .carry/tuning.db ] && [ ! -f $NMGEN_DB ] && cp .carry/tuning.db $NMGEN_DB && chmod u+w $NMGEN_DB
               python3 -m nmgen.cli bench --suite $suite --a-major $am --quiet --json $OUT/bench_${suite}_${am}.json \
                 --plot $OUT/bench_${suite}_${am}.png 2>&1 | tee $OUT/bench_${suite}_${am}.log | tail -32 ;;
    *)         python3 -m nmgen.cli $step 2>&1 | tee -a $OUT/commands.log | tail -40 ;;
  esac
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu --format=csv | tee -a $OUT/gpu.txt
# the tool returns at most 8 files: fold the database's write-ahead log back into it (one file)
if [ -f $OUT/tuning.db ]; then
  python3 -c "import sqlite3; sqlite3.connect('$OUT/tuning.db').execute('PRAGMA wal_checkpoint(TRUNCATE)')" \
    && rm -f $OUT/tuning.db-wal $OUT/tuning.db-shm
fi
