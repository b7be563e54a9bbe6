# The two commands of the README, and the steps they are made of.
#   make demo   set up, build, and run the main job: the Llama example trainer on 4 ranks
#               under mpirun (dp=2 x tp=2) on the fortunes corpus; at step 150 one rank is
#               killed and the other three re-form without it and finish the run
#   make test   set up, build, and run the whole test suite through ctest
#   make asan   the comm, checkpoint and elastic tests built with AddressSanitizer and
#               UndefinedBehaviorSanitizer, in build-asan/
#   make tsan   the same tests built with ThreadSanitizer, in build-tsan/

BUILD ?= build
, := ,
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

# ccache keys on paths relative to the checkout, so a fresh clone elsewhere reuses its objects.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := 1
# The test targets' precompiled headers: cacheable with these (ccache's manual, "Precompiled headers").
export CCACHE_SLOPPINESS := pch_defines,time_macros,include_file_mtime,include_file_ctime

ifeq ($(shell id -u),0)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
endif

.PHONY: all setup configure build test demo collective-demo bench asan tsan clean

all: build

setup:
	@scripts/setup.sh

$(BUILD)/build.ninja: | setup
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# ctest runs TEST_JOBS tests at once; each gets its share of the cores for LibTorch's OpenMP pool
# (libgomp's threads spin while they wait: two tests each as wide as the machine made a
# one-process run 100x slower). An OMP_NUM_THREADS of the caller's is kept.
TEST_JOBS ?= 2
TEST_THREADS := $(shell n=$$(( $$(nproc) / $(TEST_JOBS) )); [ $$n -gt 0 ] || n=1; echo $$n)

test: build
	cd $(BUILD) && OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TEST_THREADS)} \
	  ctest --output-on-failure -j $(TEST_JOBS) --timeout 600

CORPUS ?= $(BUILD)/data/fortunes

$(CORPUS)/train.bin: | build
	$(BUILD)/examples/llama/llama_prepare --out $(CORPUS) /usr/share/games/fortunes

# Open MPI's daemon reports the killed rank with a harmless "PMIX ERROR: BAD-PARAM" line (see
# the README): the demo's output leaves it out.
demo: SHELL := /bin/bash
demo: build $(CORPUS)/train.bin
	set -o pipefail; \
	mpirun --oversubscribe --bind-to none --enable-recovery -np 4 -x TENAX_FAULT=kill@150:rank=3 \
	  $(BUILD)/examples/llama/llama_train --elastic --preset tiny --tp 2 --global-batch 16 \
	  --steps 300 --log-interval 20 --eval-interval 100 --data $(CORPUS)/train.bin \
	  --ckpt-run demo-$$$$ 2>&1 | grep --line-buffered -v 'PMIX ERROR: BAD-PARAM'

collective-demo: build
	mpirun --oversubscribe -np 4 $(BUILD)/bench/tenax-collective-perf -b 1M -e 64M -f 4 -c 1

bench: build
	@scripts/setup.sh bench
	bench/compare_allreduce.sh 5 "2 4" 1048576 268435456 50
	$(BUILD)/bench/tenax-kernels-bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

# The sanitizer builds: the test drivers of the comm, checkpoint and elastic layers (and what
# they run: workers, tenaxrun, tenax-store, tenax-ckpt, llama_train), then those tests.
# Suppressions (tests/sanitizers/) cover third-party code only.
SAN_TARGETS := comm_tests ckpt_tests elastic_tests recovery_tests llama_prepare
SAN_LABELS := ^(comm|checkpoint|elastic)$$
# Left out: the test whose process is the Python interpreter (not instrumented: an instrumented
# probe library cannot load into it), besides the mpirun tests, which run apart below.
SAN_SKIP := TorchsGlooAndTenaxsGloo
SAN_FLAGS = -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTENAX_SANITIZE=$(1)
# Under mpirun, Open MPI's leaks are matched by library through full stacks (the fast unwinder
# stops inside its plugins), so those tests run apart with the slow unwinder.
ASAN_BASE := detect_leaks=1:abort_on_error=1:suppressions=$(CURDIR)/tests/sanitizers/asan.supp
SAN_ENV := ASAN_OPTIONS=$(ASAN_BASE) \
  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizers/lsan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(CURDIR)/tests/sanitizers/ubsan.supp \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/sanitizers/tsan.supp \
  OMPI_MCA_mca_base_component_disable_dlclose=1 PMIX_MCA_mca_base_component_disable_dlclose=1

# ThreadSanitizer sees only instrumented code: LibTorch's OpenMP pool (libgomp, not
# instrumented) would show as races, so ATen runs on the calling thread there.
tsan: SAN_EXTRA := OMP_NUM_THREADS=1

asan tsan: setup
	cmake -S . -B build-$@ -G Ninja $(call SAN_FLAGS,$(if $(filter asan,$@),address$(,)undefined,thread))
	cmake --build build-$@ -j $(JOBS) --target $(SAN_TARGETS)
	cd build-$@ && $(SAN_ENV) $(SAN_EXTRA) ctest --output-on-failure -j 2 --timeout 900 -L '$(SAN_LABELS)' -E 'Mpirun|$(SAN_SKIP)'
	cd build-$@ && $(SAN_ENV) $(SAN_EXTRA) ASAN_OPTIONS=$(ASAN_BASE):fast_unwind_on_malloc=0 \
	  ctest --output-on-failure -j 2 --timeout 900 -L '$(SAN_LABELS)' -R Mpirun

clean:
	rm -rf $(BUILD) build-asan build-tsan
