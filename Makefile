# CacheFlow — hand-written Makefile.
#
#   make deps    install every Debian package the build and tests need (idempotent)
#   make         build libcacheflow, cacheflowd, cacheflowctl, cacheflow-sim, tests
#   make test    deps + build + run the whole suite (ends with "N passed, N failed")
#   make asan    the test suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make tsan    the daemon under ThreadSanitizer, through the integration tests that start it
#   make demo    generate the demo model and run the main job on the CPU backend
#   make eval-evict  trace-driven evaluation of the eviction policies (lru / s3fifo / cost)
#   make eval-evict-daemon  the same policies on the real daemon: executed vs simulated restores
#   make clean
#
# Knobs: CC, NVCC, CUDA_HOME, BUILD, OPT, V=1 (show commands), CUDA=0 (skip CUDA).
# Sources are discovered by wildcard: a new lib/<module>/*.c, tests/unit/test_*.c,
# daemon/ctl/*.c or kernels/*.cu file needs no Makefile edit.

BUILD     ?= build
CC        ?= cc
OPT       ?= -O2
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(shell command -v nvcc 2>/dev/null || { test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc; })
CUDA      ?= $(if $(NVCC),1,0)
PYTHON    ?= /usr/bin/python3

ifeq ($(V),1)
Q :=
else
Q := @
endif

# Debian packages: build (C libs), tests (python3 grpc client), fuzzing (clang).
DEB_PKGS := build-essential pkg-config clang libclang-rt-14-dev \
            libopenblas-dev liburing-dev libxxhash-dev libinih-dev libuv1-dev \
            libmicrohttpd-dev libgrpc-dev libprotobuf-c-dev protobuf-c-compiler \
            protobuf-compiler python3 python3-numpy python3-grpcio python3-grpc-tools \
            curl jq e2fsprogs \
            redis-server redis-tools libhiredis-dev libssl-dev openssl \
            librsvg2-bin

CPPFLAGS += -Ilib -I. -Idaemon -Itests -I$(BUILD)/gen -I/usr/include/x86_64-linux-gnu/openblas-pthread -D_GNU_SOURCE
SAN      ?=
CFLAGS   ?= -g
CFLAGS   += $(SAN) $(OPT) -std=c11 -pthread -fPIC -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -Wno-missing-field-initializers -MMD -MP
LDFLAGS  += -pthread $(SAN)
LDLIBS   += -lopenblas -luring -lxxhash -lhiredis -lm
DAEMON_LDLIBS := -lgrpc -lgpr -lprotobuf-c -luv -lmicrohttpd -linih -lcrypto

ifeq ($(CUDA),1)
CPPFLAGS     += -DCF_HAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_LDLIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lcuda -lstdc++
NVCCFLAGS    ?= -O3 -g -lineinfo
NVCCFLAGS    += -std=c++17 -arch=sm_90 -Xcompiler -fPIC -Ilib -I. -DCF_HAVE_CUDA=1 -MMD -MP
endif

# ---------------------------------------------------------------- sources
LIB_SRC    := $(filter-out lib/client/%,$(wildcard lib/*/*.c))
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o)
KERN_SRC   := $(wildcard kernels/*.cu)
KERN_OBJ   := $(KERN_SRC:%.cu=$(BUILD)/%.o)
CTL_SRC    := $(wildcard daemon/ctl/*.c)
CTL_OBJ    := $(CTL_SRC:%.c=$(BUILD)/%.o)
SIM_SRC    := $(wildcard daemon/sim/*.c)
SIM_OBJ    := $(SIM_SRC:%.c=$(BUILD)/%.o)
DAEMON_SRC := $(wildcard daemon/*.c)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
# daemon: its modules (all but main) as a library that cacheflowd and the unit tests link.
DAEMON_LIB_OBJ := $(filter-out $(BUILD)/daemon/cf_main.o,$(DAEMON_OBJ))
LIBDAEMON  := $(if $(DAEMON_SRC),$(BUILD)/libcfdaemon.a)
PROTO_SRC  := $(wildcard proto/cacheflow/v1/*.proto)
# daemon: the standard grpc.health.v1 service, compiled with protoc-c like ours.
PROTO_SRC  += $(wildcard proto/grpc/health/v1/*.proto)
# daemon: Python stubs for the client package and tests (cacheflow protos only: a generated
# `grpc` package would shadow grpcio's).
PY_STUBS   := $(patsubst proto/%.proto,$(BUILD)/py/%_pb2.py,$(wildcard proto/cacheflow/v1/*.proto))
PROTO_C    := $(PROTO_SRC:proto/%.proto=$(BUILD)/gen/%.pb-c.c)
PROTO_OBJ  := $(PROTO_C:%.c=%.o)
CLIENT_SRC := $(wildcard lib/client/*.c)
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
UNIT_BIN   := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRC  := $(wildcard tests/bench/bench_*.c)
BENCH_BIN  := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)
KTEST_SRC  := $(wildcard tests/kernels/kt_*.cu)
KTEST_BIN  := $(if $(filter 1,$(CUDA)),$(KTEST_SRC:tests/kernels/%.cu=$(BUILD)/tests/%))
# gpu: device tests written in C (tests/kernels/kt_*.c: multi-process tests of lib/gpu), built with CC.
KTEST_C_SRC := $(wildcard tests/kernels/kt_*.c)
KTEST_BIN  += $(if $(filter 1,$(CUDA)),$(KTEST_C_SRC:tests/kernels/%.c=$(BUILD)/tests/%))
TEST_MAIN  := $(BUILD)/tests/cf_test_main.o

LIBCF      := $(BUILD)/libcacheflow.a
LIBKERN    := $(if $(filter 1,$(CUDA)),$(BUILD)/libcfkernels.a)
LIBCLIENT  := $(if $(PROTO_SRC),$(BUILD)/libcacheflow_client.a)
ALL_LIBS    = $(LIBCF) $(LIBKERN) $(LDLIBS) $(if $(filter 1,$(CUDA)),$(CUDA_LDLIBS))

BINS := $(BUILD)/cacheflowctl $(if $(SIM_SRC),$(BUILD)/cacheflow-sim) \
        $(if $(DAEMON_SRC),$(BUILD)/cacheflowd)

.PHONY: all deps test asan tsan daemon-bins demo clean banner install bench fuzz test-engines bench-engines eval-evict eval-evict-daemon
all: banner $(LIBCF) $(LIBKERN) $(BINS) $(UNIT_BIN) $(BENCH_BIN) $(KTEST_BIN)
# daemon: Python stubs and the client library (also for pkg-config users).
all: $(PY_STUBS) $(LIBCLIENT)

banner:
ifeq ($(CUDA),1)
	@echo "cacheflow: nvcc found at $(NVCC): building CUDA kernels (sm_90) and the CUDA backend"
else
	@echo "cacheflow: nvcc not found: CPU backend only"
endif

# ---------------------------------------------------------------- deps
# Installs only when something is missing, so repeated runs cost a dpkg query.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

# ---------------------------------------------------------------- rules
$(BUILD)/%.o: %.c | $(if $(PROTO_SRC),$(PROTO_C))
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

# The CPU backend's elementwise kernels (exp, RoPE, softmax) need these flags to vectorise.
# `override` so the flags survive OPT/CFLAGS given on the command line (make asan, make OPT=...).
$(BUILD)/lib/model/cf_cpu_ops.o: override CFLAGS += -O3 -fno-trapping-math

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	@$(if $(Q),echo "  PROTOC  $<")
	$(Q)protoc-c --proto_path=proto --c_out=$(BUILD)/gen $<

# daemon: Python stubs (grpcio-tools of /usr/bin/python3), never committed.
$(BUILD)/py/%_pb2.py: proto/%.proto
	@mkdir -p $(BUILD)/py
	@$(if $(Q),echo "  PYPROTO $<")
	$(Q)$(PYTHON) -m grpc_tools.protoc --proto_path=proto --python_out=$(BUILD)/py --grpc_python_out=$(BUILD)/py $<

$(BUILD)/gen/%.pb-c.o: $(BUILD)/gen/%.pb-c.c
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

# attnwg: wgmma exists only on the arch-specific target sm_90a (not in compute_90): this one
# file is built for sm_90a alone; every other kernel keeps -arch=sm_90.
$(BUILD)/kernels/cf_attn_wgmma.o: NVCCFLAGS := $(filter-out -arch=sm_90,$(NVCCFLAGS)) -gencode arch=compute_90a,code=sm_90a

$(BUILD)/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/tests/kt_%: tests/kernels/kt_%.cu $(LIBKERN) $(LIBCF)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  NVCC    $<")
	$(Q)$(NVCC) $(NVCCFLAGS) $< -o $@ $(LIBKERN) $(LIBCF) -Xlinker -rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcuda -lopenblas -luring -lxxhash -lm

# gpu: a C device test links like a tool (the .cu rule above wins where a kt_*.cu exists).
$(BUILD)/tests/kt_%: $(BUILD)/tests/kernels/kt_%.o $(LIBKERN) $(LIBCF)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< -o $@ $(ALL_LIBS)

$(LIBCF): $(LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libcfkernels.a: $(KERN_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/libcacheflow_client.a: $(PROTO_OBJ) $(CLIENT_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

# cacheflowctl: every daemon/ctl/*.c is linked in directly, so subcommands that register
# themselves with a constructor are never dropped by the archive linker.
$(BUILD)/cacheflowctl: $(CTL_OBJ) $(LIBCLIENT) $(LIBCF) $(LIBKERN)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(CTL_OBJ) -o $@ $(LIBCLIENT) $(ALL_LIBS) $(if $(LIBCLIENT),$(DAEMON_LDLIBS))

# exec: the reference engine (tests/engine): a CPU-backend client of cacheflowd used by the
# integration tests and `make demo`.
REFENGINE := $(if $(PROTO_SRC),$(BUILD)/cf-refengine)
all: $(REFENGINE)
$(BUILD)/cf-refengine: $(BUILD)/tests/engine/cf_refengine.o $(LIBCLIENT) $(LIBCF) $(LIBKERN)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< -o $@ $(LIBCLIENT) $(ALL_LIBS) $(DAEMON_LDLIBS)

# harden: the preload library of the store fault tests (tests/lib/cf_faultshim.c: fails the SSD
# tier's pread/pwrite on demand).
FAULTSHIM := $(BUILD)/libcf_faultshim.so
all: $(FAULTSHIM)
$(FAULTSHIM): tests/lib/cf_faultshim.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) -shared -fPIC -O2 -Wall -Wextra -o $@ $< -ldl

# gpuexec: a GPU engine (CUDA IPC buffers over gRPC) for the device check of cacheflowd's GPU executor.
GPUENGINE := $(if $(and $(PROTO_SRC),$(filter 1,$(CUDA))),$(BUILD)/cf-gpuengine)
all: $(GPUENGINE)
$(BUILD)/cf-gpuengine: $(BUILD)/tests/engine/cf_gpuengine.o $(LIBCLIENT) $(LIBCF) $(LIBKERN)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< -o $@ $(LIBCLIENT) $(ALL_LIBS) $(DAEMON_LDLIBS)

$(BUILD)/cacheflow-sim: $(SIM_OBJ) $(LIBCF)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(SIM_OBJ) -o $@ $(ALL_LIBS)

$(BUILD)/libcfdaemon.a: $(DAEMON_LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(BUILD)/cacheflowd: $(BUILD)/daemon/cf_main.o $(LIBDAEMON) $(PROTO_OBJ) $(LIBCF) $(LIBKERN)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $(BUILD)/daemon/cf_main.o $(LIBDAEMON) $(PROTO_OBJ) -o $@ $(ALL_LIBS) $(DAEMON_LDLIBS)

$(BUILD)/tests/test_%: $(BUILD)/tests/unit/test_%.o $(TEST_MAIN) $(LIBDAEMON) $(LIBCLIENT) $(LIBCF) $(LIBKERN)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< $(TEST_MAIN) -o $@ $(LIBDAEMON) $(LIBCLIENT) $(ALL_LIBS) $(if $(LIBCLIENT),$(DAEMON_LDLIBS))

$(TEST_MAIN): tests/cf_test_main.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/bench/bench_%: $(BUILD)/tests/bench/bench_%.o $(LIBCF) $(LIBKERN)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< -o $@ $(ALL_LIBS)

# bench_restore plans with the daemon's online re-fit of the cost model (daemon/cf_refit.c)
$(BUILD)/bench/bench_restore: $(BUILD)/tests/bench/bench_restore.o $(BUILD)/daemon/cf_refit.o $(LIBCF) $(LIBKERN)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS) $< $(BUILD)/daemon/cf_refit.o -o $@ $(ALL_LIBS)

# ---------------------------------------------------------------- targets
# The suite: unit binaries, kernel tests (skipped with a line when no GPU), integration scripts.
test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) PYTHON=$(PYTHON) tests/run.sh

# Connectors against REAL engines (vLLM CPU build in a pinned venv cached under ~/.cache/cacheflow,
# built on first use); ends with "engines: N passed, N failed". Not part of `make test` (minutes).
test-engines: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) tests/engines/run.sh

bench-engines: all
	$(Q)BUILD=$(BUILD) tests/engines/bench.sh $(BENCH_ARGS)

# the larger held-out shape matrix (17 shapes x 6 policies, real daemon; a few minutes):
# tests/integration/shapes_matrix.sh with CF_SHAPES_FULL=1 (make test runs its small part)
.PHONY: bench-shapes
bench-shapes: all
	$(Q)CF_SHAPES_FULL=1 BUILD=$(BUILD) bash tests/integration/shapes_matrix.sh

# CF_MAKE_SAN: a test that runs make in $(BUILD) (daemon_install) passes the same flags, so it
# does not rebuild build-asan with CUDA on and without the sanitizers under the later tests.
ASAN_SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build-asan CUDA=0 OPT=-O1 SAN="$(ASAN_SAN)" all
	$(Q)BUILD=build-asan PYTHON=$(PYTHON) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 CF_ASAN=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp CF_MAKE_SAN="$(ASAN_SAN)" tests/run.sh

# harden: ThreadSanitizer build of the daemon, its tools and the reference engine, and of the
# store's unit tests (TSAN_UNITS: its own threads, readers, savers, spiller, on one store), then
# those tests and the integration tests that start the daemon, each report written under
# build-tsan/tsan/ and counted by tests/tsan.sh; tests/tsan.supp explains every suppression.
daemon-bins: $(BINS) $(REFENGINE) $(PY_STUBS) $(FAULTSHIM)
# (not test_store_crash: its subject is kill -9, and under TSan's slowdown on a busy machine its
# random kills land before the children reach its count of durable saves)
TSAN_UNITS := test_store test_store_cost test_store_stress test_store_fill test_store_shrink test_store_enospc test_ipc \
              test_evict_refresh test_exec_store
tsan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=build-tsan CUDA=0 OPT=-O1 \
	  SAN="-fsanitize=thread -fno-omit-frame-pointer" daemon-bins $(TSAN_UNITS:%=build-tsan/tests/%)
	$(Q)BUILD=build-tsan PYTHON=$(PYTHON) CF_TSAN=1 TSAN_UNITS="$(TSAN_UNITS)" tests/tsan.sh

bench: all
	$(Q)for b in $(BENCH_BIN); do echo "== $$b"; $$b || exit 1; done

# eviction policies on generated traces (issue 15.3); EVAL_ARGS="--seed 7 --scale 0.5" etc.
eval-evict: $(BUILD)/bench/bench_eval_evict
	tests/bench/eval_evict.sh $(EVAL_ARGS)

# the same on three real cacheflowd (demo model, CPU backend, emulated links), one capacity;
# EVAL_ARGS="--seed 2 --cap 0.3" etc. (tests/bench/eval_evict_daemon.py)
eval-evict-daemon: $(BINS) $(REFENGINE)
	BUILD=$(BUILD) $(PYTHON) tests/bench/eval_evict_daemon.py $(EVAL_ARGS)

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) tests/demo.sh

# ---------------------------------------------------------------- fuzz
# libFuzzer targets for the untrusted-input parsers (tests/fuzz/fuzz_*.c), built with clang and
# ASan+UBSan into $(BUILD)/fuzz. `make fuzz` runs each for FUZZ_SECONDS on one core, seeded from
# tests/fuzz/corpus/<name>/ (new inputs go to tests/fuzz/out/<name>/, crashes to tests/fuzz/out/).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS  := -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_LIBSRC  := lib/util/cf_err.c lib/util/cf_json.c lib/util/cf_dtype.c lib/model/cf_safetensors.c \
                lib/model/cf_hfconfig.c lib/util/cf_log.c lib/store/cf_redis.c lib/store/cf_redis_slots.c \
                lib/model/cf_model.c
FUZZ_SRC     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIBSRC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) $< $(FUZZ_LIBSRC) -o $@ -lhiredis -lxxhash -lm

# harden: the wire target links the request checks (daemon/cf_reqcheck.c, what cf_service's handlers
# call), the config defaults and the generated protobuf-c code; CUDA off (it only parses UUIDs).
FUZZ_WIRE_SRC := daemon/cf_reqcheck.c daemon/cf_config.c daemon/cf_trace.c lib/ipc/cf_kvmap.c lib/gpu/cf_gpu.c \
                 lib/util/cf_err.c lib/util/cf_log.c lib/util/cf_dtype.c lib/store/cf_redis.c lib/store/cf_redis_slots.c \
                 $(BUILD)/gen/cacheflow/v1/cacheflow.pb-c.c $(BUILD)/gen/grpc/health/v1/health.pb-c.c
$(BUILD)/fuzz/fuzz_wire: tests/fuzz/fuzz_wire.c $(FUZZ_WIRE_SRC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(filter-out -DCF_HAVE_CUDA=1,$(CPPFLAGS)) $(FUZZ_CFLAGS) $< $(FUZZ_WIRE_SRC) \
	  -o $@ -lprotobuf-c -linih -lhiredis -lm

fuzz: $(FUZZ_BIN)
	$(Q)for b in $(FUZZ_BIN); do n=$${b##*/fuzz_}; mkdir -p tests/fuzz/out/$$n; \
	  echo "== fuzz_$$n for $(FUZZ_SECONDS)s"; \
	  $$b -max_total_time=$(FUZZ_SECONDS) -dict=tests/fuzz/$$n.dict \
	    -artifact_prefix=tests/fuzz/out/$$n- tests/fuzz/out/$$n tests/fuzz/corpus/$$n || exit 1; done

# daemon: `make install` (PREFIX, DESTDIR, SYSCONFDIR, UNITDIR): binaries, the config (kept
# when one is there), the systemd unit (paths rewritten to PREFIX/SYSCONFDIR), sysusers/tmpfiles
# snippets, the client library with its headers, and cacheflow.pc for pkg-config.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
UNITDIR    ?= /lib/systemd/system
INCDIR      = $(DESTDIR)$(PREFIX)/include/cacheflow
install: $(BINS) $(LIBCF) $(LIBCLIENT)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(INCDIR)/client $(INCDIR)/util \
	  $(INCDIR)/cacheflow/v1 $(DESTDIR)$(SYSCONFDIR)/cacheflow $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)/usr/lib/sysusers.d $(DESTDIR)/usr/lib/tmpfiles.d
	install -m 0755 $(BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(LIBCF) $(LIBCLIENT) $(DESTDIR)$(PREFIX)/lib/
	install -m 0644 lib/client/cf_client.h $(INCDIR)/client/
	install -m 0644 lib/util/cf_err.h $(INCDIR)/util/
	install -m 0644 $(BUILD)/gen/cacheflow/v1/cacheflow.pb-c.h $(INCDIR)/cacheflow/v1/
	test -e $(DESTDIR)$(SYSCONFDIR)/cacheflow/cacheflowd.conf || \
	  install -m 0640 conf/cacheflowd.conf $(DESTDIR)$(SYSCONFDIR)/cacheflow/cacheflowd.conf
	sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' -e 's|/etc/cacheflow/|$(SYSCONFDIR)/cacheflow/|g' \
	  systemd/cacheflowd.service > $(DESTDIR)$(UNITDIR)/cacheflowd.service
	install -m 0644 systemd/cacheflowd.sysusers.conf $(DESTDIR)/usr/lib/sysusers.d/cacheflowd.conf
	install -m 0644 systemd/cacheflowd.tmpfiles.conf $(DESTDIR)/usr/lib/tmpfiles.d/cacheflowd.conf
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include/cacheflow' '' \
	  'Name: cacheflow' 'Description: CacheFlow client library (talks to cacheflowd over gRPC)' \
	  'Version: 0.1.0' 'Requires: libprotobuf-c' 'Requires.private: grpc gpr' \
	  'Libs: -L$${libdir} -lcacheflow_client -lcacheflow' 'Libs.private: -lgrpc -lgpr -lopenblas -luring -lxxhash -lm -pthread' \
	  'Cflags: -I$${includedir}' > $(DESTDIR)$(PREFIX)/lib/pkgconfig/cacheflow.pc

clean:
	rm -rf $(BUILD) build-asan build-tsan

.SECONDARY:

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
