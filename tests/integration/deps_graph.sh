#!/usr/bin/env bash
# The dependency graph (README "Dependencies", ../shared/DESIGN.md §5), checked on every
# #include of lib/, kernels/, daemon/ and tests/engine/:
#   lib/util < {kernels, lib/sched, lib/store} < lib/model < lib/ipc < lib/gpu < lib/exec < daemon
# a module includes only itself and modules before it (the three of one rank not each other);
# kernels are reached through lib/model, lib/gpu and lib/exec, not included by daemon or engines;
# lib/client includes only util, the generated proto code and gRPC; only lib/client and daemon
# include gRPC / protobuf-c / the proto code, only daemon libuv, libmicrohttpd and inih, only
# lib/store hiredis (the remote tier's client, cf_redis.c: the rest reach Redis through the store);
# the test engines (tests/engine) use lib/ and lib/client, never daemon/.
# A quoted include resolves as the compiler does (the file's directory, then -Ilib -I. -Idaemon
# -Itests; cacheflow/ and grpc/ are the generated proto headers); one that resolves nowhere fails.
# Checked twice: the tree is clean, and a copy with planted bad includes fails naming each file,
# line and edge.
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_test_dir cf-deps

# rank of a ranked module; empty for the others (client, proto, engine, tests)
cf__rank() {
  case $1 in
    util) echo 0 ;; kernels|sched|store) echo 1 ;; model) echo 2 ;; ipc) echo 3 ;;
    gpu) echo 4 ;; exec) echo 5 ;; daemon) echo 6 ;; *) echo "" ;;
  esac
}
# module of a path relative to the root
cf__module() {
  case $1 in
    lib/client/*) echo client ;; lib/*/*) local m=${1#lib/}; echo "${m%%/*}" ;;
    kernels/*) echo kernels ;; daemon/*) echo daemon ;; tests/engine/*) echo engine ;;
    proto:*) echo proto ;; tests/*) echo tests ;; *) echo "?" ;;
  esac
}
# why edge FROM -> TO is not allowed; empty when it is
cf__edge_error() {
  local from=$1 to=$2 rf rt
  [ "$from" = "$to" ] && return
  case $from in
    client) case $to in util|proto) return ;; esac
            echo "lib/client uses only util, the proto code and gRPC"; return ;;
    engine) case $to in daemon|tests|proto|kernels) echo "test engines use lib/ and lib/client only (never daemon/, kernels/ or the proto code)"; return ;; esac
            return ;;
  esac
  case $to in
    client) [ "$from" = daemon ] && return; echo "only daemon/ (cacheflowctl) and the test engines use lib/client"; return ;;
    proto) [ "$from" = daemon ] && return; echo "only lib/client and daemon/ use the generated proto code"; return ;;
    tests|engine) echo "library and daemon code never includes tests/"; return ;;
    kernels) case $from in daemon) echo "daemon/ reaches kernels through lib/model, lib/gpu, lib/exec"; return ;; esac ;;
  esac
  rf=$(cf__rank "$from"); rt=$(cf__rank "$to")
  if [ -z "$rf" ] || [ -z "$rt" ]; then echo "unknown module"; return; fi
  if [ "$rt" -ge "$rf" ]; then echo "$from may include only modules before it (util < {kernels, sched, store} < model < ipc < gpu < exec < daemon)"; fi
}
# system headers only some modules may include
cf__system_error() {
  local from=$1 h=$2
  case $h in
    grpc/*|protobuf-c/*) case $from in client|daemon) return ;; esac; echo "only lib/client and daemon/ include gRPC / protobuf-c" ;;
    uv.h|microhttpd.h|ini.h) [ "$from" = daemon ] && return; echo "only daemon/ includes libuv, libmicrohttpd, inih" ;;
    hiredis/*) [ "$from" = store ] && return; echo "only lib/store includes hiredis (the remote tier's client)" ;;
  esac
}

# deps_check ROOT: one line per bad include ("FILE:LINE: FROM -> TO (INCLUDE): WHY"); status 1 if any
deps_check() {
  local root=$1 n=0 f line inc dir from to why target
  while IFS= read -r f; do
    from=$(cf__module "$f"); dir=$(dirname "$f")
    while IFS=: read -r line inc; do
      if [[ $inc =~ \<([^\>]+)\> ]]; then
        why=$(cf__system_error "$from" "${BASH_REMATCH[1]}")
        [ -n "$why" ] && { echo "$f:$line: $from -> <${BASH_REMATCH[1]}>: $why"; n=$((n+1)); }
        continue
      fi
      [[ $inc =~ \"([^\"]+)\" ]] || continue
      inc=${BASH_REMATCH[1]}; target=
      for cand in "$dir/$inc" "lib/$inc" "$inc" "daemon/$inc" "tests/$inc"; do
        [ -f "$root/$cand" ] && { target=$cand; break; }
      done
      if [ -z "$target" ]; then
        case $inc in cacheflow/*|grpc/*) target="proto:$inc" ;;
          *) echo "$f:$line: $from -> ? (\"$inc\"): resolves to no file"; n=$((n+1)); continue ;; esac
      fi
      case $target in *..*) target=$(cd "$root" && realpath -m --relative-to=. "$target") ;; esac
      to=$(cf__module "$target")
      why=$(cf__edge_error "$from" "$to")
      [ -n "$why" ] && { echo "$f:$line: $from -> $to (\"$inc\"): $why"; n=$((n+1)); }
    done < <(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]' "$root/$f" | sed -E 's/^([0-9]+):[[:space:]]*#[[:space:]]*include[[:space:]]*/\1:/')
  done < <(cd "$root" && find lib kernels daemon tests/engine -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | sort)
  [ "$n" -eq 0 ]
}

# 1. the tree as it is
out=$(deps_check .); rc=$?
check "every #include of lib/, kernels/, daemon/, tests/engine/ follows the graph" "[ $rc -eq 0 ]" "$out"
nf=$(cd . && find lib kernels daemon tests/engine -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) | wc -l)
check "the check saw the whole tree ($nf files)" "[ $nf -ge 100 ]"

# 2. a copy with one planted bad include per rule: each is reported, naming file, line and edge
mkdir -p "$T/tree/tests"
cp -r lib kernels daemon "$T/tree/" && cp -r tests/engine "$T/tree/tests/"
plant() { # FILE INCLUDE-LINE: appended as the file's last line
  echo "$2" >>"$T/tree/$1"
  echo "$1:$(wc -l <"$T/tree/$1")"
}
declare -A want
want[upward]="$(plant lib/store/cf_store_key.c '#include "exec/cf_exec.h"') : store -> exec"
want[peer]="$(plant lib/sched/cf_cost.c '#include "store/cf_store.h"') : sched -> store"
want[util]="$(plant lib/util/cf_json.c '#include "model/cf_model.h"') : util -> model"
want[ipc]="$(plant lib/ipc/cf_ready.h '#include "gpu/cf_gpu.h"') : ipc -> gpu"
want[client]="$(plant lib/client/cf_client.c '#include "model/cf_model.h"') : client -> model"
want[daemon_kernels]="$(plant daemon/ctl/cf_ctl_version.c '#include "kernels/cf_probe.h"') : daemon -> kernels"
want[engine_daemon]="$(plant tests/engine/cf_refengine.c '#include "cf_config.h"') : engine -> daemon"
want[libuv]="$(plant lib/exec/cf_exec.c '#include <uv.h>') : exec -> <uv.h>"
want[grpc]="$(plant lib/store/cf_store_io.c '#  include <grpc/grpc.h>') : store -> <grpc/grpc.h>"
want[hiredis]="$(plant lib/exec/cf_cellsrc_store.c '#include <hiredis/hiredis.h>') : exec -> <hiredis/hiredis.h>"
want[proto]="$(plant lib/exec/cf_save.c '#include "cacheflow/v1/cacheflow.pb-c.h"') : exec -> proto"
want[missing]="$(plant lib/model/cf_kv.c '#include "nowhere/cf_nothing.h"') : model -> ?"
out=$(deps_check "$T/tree"); rc=$?
echo "$out" | sed 's/^/     planted: /'
check "the planted copy fails the check" "[ $rc -ne 0 ]"
for k in "${!want[@]}"; do
  loc=${want[$k]% : *}; edge=${want[$k]#* : }
  check "planted $k include reported as $loc: $edge" "echo \"\$out\" | grep -qF -- \"$loc: $edge\"" "$out"
done
check "nothing but the planted includes is reported" "[ \$(echo \"\$out\" | grep -c .) -eq ${#want[@]} ]" "$out"
finish
