# The two commands of the README, and the steps they are made of.
#   make demo   set up, build, and run the main job: the Llama example trainer on 4 ranks
#               under mpirun (dp=2 x tp=2) on the fortunes corpus; at step 150 one rank is
#               killed and the other three re-form without it and finish the run
#   make test   set up, build, and run the whole test suite through ctest

BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

ifeq ($(shell id -u),0)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
endif

.PHONY: all setup configure build test demo collective-demo bench clean

all: build

setup:
	@scripts/setup.sh

$(BUILD)/build.ninja: | setup
	cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS)

configure: setup $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j 2 --timeout 600

CORPUS ?= $(BUILD)/data/fortunes

$(CORPUS)/train.bin: | build
	$(BUILD)/examples/llama/llama_prepare --out $(CORPUS) /usr/share/games/fortunes

demo: build $(CORPUS)/train.bin
	mpirun --oversubscribe --bind-to none --enable-recovery -np 4 -x TENAX_FAULT=kill@150:rank=3 \
	  $(BUILD)/examples/llama/llama_train --elastic --preset tiny --tp 2 --global-batch 16 \
	  --steps 300 --log-interval 20 --eval-interval 100 --data $(CORPUS)/train.bin \
	  --ckpt-run demo-$$$$

collective-demo: build
	mpirun --oversubscribe -np 4 $(BUILD)/bench/tenax-collective-perf -b 1M -e 64M -f 4 -c 1

bench: build
	@scripts/setup.sh bench
	bench/compare_allreduce.sh 5 "2 4"
	$(BUILD)/bench/tenax-kernels-bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

clean:
	rm -rf $(BUILD)
