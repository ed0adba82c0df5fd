# Entry points for a fresh Debian 12 machine: `make run` and `make test`.
# Both install missing packages first (scripts/install-deps.sh), configure
# $(BUILD_DIR) with Ninja if it is not configured yet, and build with -j2.
#
#   make run                    start the all-in-one `tierkv up --demo`
#   make test                   build everything and run all tests
#   make build                  build everything
#   make clean                  remove $(BUILD_DIR)
#   make TIERKV_CUDA=OFF test   force a CPU-only build (AUTO, ON or OFF)

# TIERKV_CUDA given on the command line or in the environment overrides the
# value cached in an existing build directory; left out, the cache is kept.
ifneq ($(origin TIERKV_CUDA),undefined)
CUDA_GIVEN  := 1
endif

BUILD_DIR   ?= build
TIERKV_CUDA ?= AUTO
JOBS        ?= 2

.PHONY: run test build clean deps configure

deps:
	bash scripts/install-deps.sh

# Configure only when needed: no build.ninja yet, or a TIERKV_CUDA given that
# differs from the cached one. After that, Ninja re-runs CMake by itself
# whenever a CMakeLists.txt changes.
CONFIGURE = cmake -S . -B $(BUILD_DIR) -G Ninja -DTIERKV_CUDA=$(TIERKV_CUDA)

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ] || \
	   { [ -n "$(CUDA_GIVEN)" ] && \
	     ! grep -qx 'TIERKV_CUDA:STRING=$(TIERKV_CUDA)' $(BUILD_DIR)/CMakeCache.txt; }; then \
	  echo '$(CONFIGURE)'; $(CONFIGURE); \
	fi

build: configure
	cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	$(BUILD_DIR)/cli/tierkv up --demo

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS)

clean:
	rm -rf $(BUILD_DIR)
