# Included first by the Makefile: shell settings, where things live, the toolchain, hardware and launch.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules --no-builtin-variables
.DEFAULT_GOAL := help

ifeq ($(filter grouped-target,$(.FEATURES)),)
  $(error GNU make >= 4.3 is required (found $(MAKE_VERSION)): use `nix develop` or install a newer make)
endif

# ============================================================================ where things live
export NANOCHAT_BASE_DIR ?= $(HOME)/.cache/nanochat
BASE   := $(NANOCHAT_BASE_DIR)
STAMPS := $(BASE)/.stamps
REPORT := $(BASE)/report/report.md
# The path goes unquoted into file targets and recipes (GNU make cannot have a target with a blank):
# anything but letters, digits and . _ - + @ / is refused here, before any rule is read. (As typed:
# make would have expanded a $ in it already.)
path_chars := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
  0 1 2 3 4 5 6 7 8 9 . _ - + @ /
without = $(if $(2),$(call without,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
base_typed := $(if $(filter file default,$(origin NANOCHAT_BASE_DIR)),$(BASE),$(value NANOCHAT_BASE_DIR))
ifneq ($(filter-out 1,$(words x$(base_typed)x))$(call without,$(base_typed),$(path_chars)),)
  $(error NANOCHAT_BASE_DIR=$(base_typed) holds characters a make target or a shell recipe cannot carry: use a path of letters, digits and . _ - + @ / only (e.g. a symlink to that directory))
endif

# ============================================================================ toolchain
# Inside `nix develop` (IN_NIX_SHELL set) the shell's python is used and nothing is installed.
# Outside, a .venv is bootstrapped with pip on first use; TORCH_SPEC picks the torch build
# (the default installs the CPU wheel on our CI image; use e.g. TORCH_SPEC='torch==2.11.0' plus
# PIP_EXTRA='--index-url https://download.pytorch.org/whl/cu130' for a CUDA build).
IN_NIX_SHELL ?=
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA  ?=
# the package extras installed into .venv: add cudnn on NVIDIA machines (PY_EXTRAS=test,cudnn) for
# cuDNN's sliding-window attention kernel (README, Dependencies)
PY_EXTRAS  ?= test
SYSTEM_PYTHON ?= python3
ifneq ($(IN_NIX_SHELL),)
  PY       ?= python3
  VENV_DEP ?=
else
  PY       ?= $(VENV)/bin/python
  VENV_DEP ?= $(VENV)/.installed
endif

# Some container images forbid writing bytecode (PYTHONDONTWRITEBYTECODE) AND ship torch without any,
# so every stage process would compile torch from source again: there the stages keep it under the base
# dir instead (the install itself stays untouched). PYCACHE=0 opts out. Probed only in that case.
PYCACHE ?= 1
torch_pyc_probe = from nanochat.doctor import torch_lacks_bytecode; print("missing" if torch_lacks_bytecode() else "present")
ifneq ($(and $(PYTHONDONTWRITEBYTECODE),$(filter 1,$(PYCACHE))),)
  ifeq ($(shell $(PY) -c '$(torch_pyc_probe)' 2>/dev/null),missing)
    export PYTHONPYCACHEPREFIX := $(BASE)/pycache
    unexport PYTHONDONTWRITEBYTECODE
  endif
endif

# ============================================================================ hardware & launch
# GPUs are counted read-only at parse time (no files touched), so `make help` shows real defaults.
NGPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
ifeq ($(strip $(NGPUS)),)
  NGPUS := 0
endif
ifeq ($(NGPUS),0)
  PRESET      ?= tiny
  DEVICE_TYPE ?= cpu
  NPROC       ?= 1
else
  PRESET      ?= speedrun
  DEVICE_TYPE ?= cuda
  NPROC       ?= $(NGPUS)
endif
# multi-node: same `make pretrain` on every node; torchrun's own rendezvous does the rest
NNODES      ?= 1
NODE_RANK   ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
RDZV_ENDPOINT ?=
USE_LIBUV   ?=

# torchrun-compatible launcher; ours when USE_LIBUV=0 (a torch built without libuv)
LAUNCHER ?= $(if $(filter 0,$(USE_LIBUV)),$(PY) -m nanochat.torchrun_no_libuv,$(PY) -m torch.distributed.run)
ifeq ($(NNODES),1)
  LAUNCH_ARGS := --standalone --nproc_per_node=$(NPROC)
else ifneq ($(RDZV_ENDPOINT),)
  LAUNCH_ARGS := --nnodes=$(NNODES) --nproc_per_node=$(NPROC) --rdzv-backend=c10d --rdzv-endpoint=$(RDZV_ENDPOINT)
else
  LAUNCH_ARGS := --nnodes=$(NNODES) --node_rank=$(NODE_RANK) --nproc_per_node=$(NPROC) --master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT)
endif
# Scripts are always called as `-m scripts.X -- --flags`: torchrun would otherwise parse (and
# mis-abbreviate: --run -> --run-path) the script's flags itself; our scripts drop the "--".
# one process on one node: plain python (no rendezvous, faster start)
ifeq ($(NPROC)$(NNODES),11)
  RUN_DIST ?= $(PY)
else
  RUN_DIST ?= $(LAUNCHER) $(LAUNCH_ARGS)
endif
