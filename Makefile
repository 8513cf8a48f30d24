# nanochat pipeline: data -> tokenizer -> pretrain -> midtrain -> sft (-> rl with RL=1) -> report
#
# Every stage is a FILE target: a stamp in $(STAMPS) written last, only when the stage succeeded,
# whose CONTENT is the stage's semantic parameters, the ids of the upstream stamps it was built on
# and the files it produced (size and hash). At parse time each stamp is compared with what is
# requested now and with what is on disk; a difference (or a missing or changed output) adds the
# FORCE prerequisite, and a stale stage makes everything downstream stale. So a parameter change
# reruns exactly the stages that consume it and what follows, while `touch`, checkout, clock steps,
# NPROC or batch-size changes rerun nothing (no decision reads an mtime), and `make -n`/`-q` stay
# truthful and side-effect free. `make help` lists verbs and variables.
#
# Layout: toolchain and hardware; presets; the machinery; then ONE BLOCK PER STAGE (its knobs, the
# flags they become, its rule) in DAG order; validation; the user verbs.
#
# Defaults have ONE source of truth: the scripts' argparse defaults. Every semantic knob is still a
# make variable (so the stamp records the effective value, whether or not the user spelled out the
# default, and `make -n` prints the exact command), and each knob's default here is that script
# flag's default, which tests/test_make_defaults.py enforces: change a default in the script, and
# the test names the line to change here. A preset sets only what it changes. (Reading the
# defaults from the scripts at parse time would import torch on every `make` call, `make help`
# included; passing a flag only when its variable is set would make a stamp differ between
# `make pretrain` and `make pretrain EMBEDDING_LR=<its default>`.)

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
B      := $(NANOCHAT_BASE_DIR)
STAMPS := $(B)/.stamps
REPORT := $(B)/report/report.md
# The path goes unquoted into file targets and recipes (GNU make cannot have a target with a blank):
# anything but letters, digits and . _ - + @ / is refused here, before any rule is read. (As typed:
# make would have expanded a $ in it already.)
path_chars := a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F G H I J K L M N O P Q R S T U V W X Y Z \
  0 1 2 3 4 5 6 7 8 9 . _ - + @ /
without = $(if $(2),$(call without,$(subst $(firstword $(2)),,$(1)),$(wordlist 2,$(words $(2)),$(2))),$(1))
base_typed := $(if $(filter file default,$(origin NANOCHAT_BASE_DIR)),$(B),$(value NANOCHAT_BASE_DIR))
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

# ============================================================================ presets
# A preset sets only the knobs it CHANGES from the scripts' defaults (command line and environment
# win); everything else is the stage blocks' defaults below, which are the scripts' own.
ifeq ($(PRESET),tiny)
  # the embedded default: a tiny model on the shipped public-domain corpus, minutes on 2 CPU cores
  DATA_SOURCE ?= embedded
  DATA_SHARDS ?= 8
  VOCAB_SIZE ?= 4096
  TOK_MAX_CHARS ?= 50000000
  DEPTH ?= 4
  HEAD_DIM ?= 64
  MAX_SEQ_LEN ?= 256
  WINDOW_PATTERN ?= L
  TOTAL_BATCH_SIZE ?= 4096
  # split the 4096-token batch over the processes (recursive: expanded when used, after all_procs
  # is defined)
  DEVICE_BATCH_SIZE ?= $(shell echo $$(( 16 / ($(all_procs)) )))
  NUM_ITERATIONS ?= 120
  EVAL_TOKENS ?= 65536
  CORE_MAX_PER_TASK ?= 50
  MID_ITERATIONS ?= 40
  MID_TOTAL_BATCH_SIZE ?= 4096
  MID_EVAL_TOKENS ?= 32768
  SFT_ITERATIONS ?= 40
  SFT_DEVICE_BATCH_SIZE ?= $(shell echo $$(( 8 / ($(all_procs)) )))
  SFT_EVAL_STEPS ?= 8
  SFT_METRICS_MAX ?= 200
  CHAT_EVAL_MAX ?= 20
  CHAT_MAX_NEW_TOKENS ?= 96
  RL_ITERATIONS ?= 4
  RL_EXAMPLES_PER_STEP ?= 2
  RL_SAMPLES ?= 4
  RL_MAX_NEW_TOKENS ?= 48
  RL_EVAL_EXAMPLES ?= 2
else ifeq ($(PRESET),speedrun)
  # nanochat's d20 "$100" recipe on one 8xH100 node (any NPROC works: grad accumulation); the
  # scripts' defaults are that recipe, so only the data size is set
  DATA_SHARDS ?= 240
else ifeq ($(PRESET),run1000)
  # the d26 "$1000"-class run
  DATA_SHARDS ?= 450
  TOK_MAX_CHARS ?= 4000000000
  DEPTH ?= 26
  DEVICE_BATCH_SIZE ?= 16
else
  $(error PRESET=$(PRESET) is unknown: use PRESET=tiny, PRESET=speedrun or PRESET=run1000)
endif

# knobs of no single stage
# the optional RL stage on GSM8K (`make rl`; RL=1 puts it into speedrun, before the report)
RL ?= 0
# execution-only knobs: never make a stage stale
WANDB_RUN ?= dummy
# verbs' own knobs: `make chat PROMPT=...`, `make serve PORT= HOST=`, `make soak TRIALS= SEED=`, `make distclean CONFIRM=yes`
PROMPT ?=
PORT ?= 8000
HOST ?= 127.0.0.1
CONFIRM ?=
TRIALS ?= 50
SEED ?= 0
# TRACK_CODE=1: a stage also goes stale when the CONTENT of its code changes (off by default:
# an edit to an eval helper should not silently retrain a 4-hour model)
TRACK_CODE ?= 0

# ============================================================================ the staleness machinery
FORCE: ;
empty :=
space := $(empty) $(empty)
# exact string equality (`filter` would treat % as a wildcard)
eq = $(and $(findstring x$(1),x$(2)),$(findstring x$(2),x$(1)))
# quote a make value for the shell
q = '$(subst ','\'',$(1))'

# A stage's knobs are declared once, per command, as words `flag=VAR` (`<cmd>_flags`; a store-true
# flag, passed when VAR=1, in `<cmd>_switches`), where <cmd> is the module's name (scripts.<cmd>,
# nanochat.dataset). From those words come
#   $(call flags,<cmd>)     the command's flags: --flag=$(VAR) ...
#   $(call knobs,<stage>)   the stage's semantic variables (of all of `<stage>_cmds`), sorted
#   <stage>_params          the stamp's record: VAR=value;... plus the free-form <STAGE>_ARGS
# and `make help` lists each stage's knobs from the same words. `<stage>_exec` names the stage's
# execution-only variables (never recorded). Stamps record MAKE VARIABLE names (`DEPTH=20`), so
# `make status` says `parameter DEPTH: 20 -> 26`. (Stamps written before this layout recorded other
# keys, e.g. depth=, lr_scalar=: each such stage reruns once; training resumes where compatible.)
flag_name = $(firstword $(subst =, ,$(1)))
flag_var = $(lastword $(subst =, ,$(1)))
flags = $(strip $(foreach f,$($(1)_flags),--$(call flag_name,$(f))=$($(call flag_var,$(f)))) $(foreach f,$($(1)_switches),$(if $(filter 1,$($(call flag_var,$(f)))),--$(call flag_name,$(f)))))
knobs = $(sort $(foreach c,$($(1)_cmds),$(foreach f,$($(c)_flags) $($(c)_switches),$(call flag_var,$(f)))))
code_hash = $(if $(filter 1,$(TRACK_CODE)),;code=$(firstword $(shell cat $(1) 2>/dev/null | sha256sum)))
params_of = $(subst $(space),;,$(strip $(foreach v,$(call knobs,$(1)),$(v)=$($(v)))));$($(1)_args)=$($($(1)_args))$(call code_hash,$($(1)_code))

# the DAG, in one place: the stage blocks below and `make dag`/`make status` all read these lists.
# rl is optional: always buildable (`make rl`, `redo-rl`), in STAGES (speedrun, report, status, dag) only with RL=1
ALL_STAGES     := data tokenizer pretrain midtrain sft rl
STAGES         := data tokenizer pretrain midtrain sft $(if $(filter 1,$(RL)),rl)
data_deps      :=
tokenizer_deps := data
pretrain_deps  := data tokenizer
midtrain_deps  := pretrain
sft_deps       := midtrain
rl_deps        := sft
report_deps    := $(STAGES)
report_params  :=
report_outputs := report/report.md
stamp = $(STAMPS)/$(1).done
deps_of = $(foreach d,$($(1)_deps),$(call stamp,$(d)))

# `make redo-<stage>` forces that stage (and everything after it)
REDO := $(patsubst redo-%,%,$(filter redo-%,$(MAKECMDGOALS)))
$(foreach s,$(REDO),$(if $(filter $(s),$(ALL_STAGES)),,$(error redo-$(s): unknown stage; stages are: $(ALL_STAGES))))

# Staleness is decided on stamp CONTENT and output files, never on mtimes (a touch, a checkout or a
# clock step must neither trigger nor hide a rerun), by ONE function, nanochat.pipeline's `evaluate`:
# `make status` prints its reasons, and the parse-time `check` at the end of this file gives make the
# stale stages (a stamp is read there, once all stage parameters are known). A stage is stale iff it
# is redone, an upstream stage is stale (it will rerun first), its stamp is missing, the stamp records
# other parameters or other upstream ids than there are now, or an output it records is missing or
# changed. Each stage's `<stage>_outputs` (relative to the base dir, {step} = its final step) is what
# `finish` records.
pipe_stages = --base $(call q,$(B)) $(foreach s,$(1),--stage $(call q,$(s)|$($(s)_deps)|$($(s)_params)))
# how a long stage treats existing checkpoints: resume if compatible, unless forced
resume_mode = $(if $(filter $(1),$(REDO)),fresh,auto)

# Only one pipeline per base dir: the first recipe of a run claims $(B)/.lock for this make
# process (its pid + start time); a second make stops with a clear message. A lock whose owner
# died (kill -9) is stale and is taken over. $$PPID in a recipe shell is make itself.
# It also notes the stage's start time, so `finish` can record its wall time for the report.
take_lock = @$(SYSTEM_PYTHON) -m nanochat.pipeline lock $(call q,$(B)) $$PPID --stage $(1)
# after the stage succeeded: write its stamp (parameters, upstream ids, outputs, a fresh id) atomically
define finish
$(if $(filter 0,$(NODE_RANK)),@$(SYSTEM_PYTHON) -m nanochat.pipeline finish $(call q,$(B)) $(1) $(call q,$($(1)_params)) \
  --deps '$($(1)_deps)' --outputs $(call q,$($(1)_outputs)),@true)
endef
# the first lines of every stage recipe: claim the lock, drop the stamp (and the step file)
define begin
$(call take_lock,$(1))
rm -f $(call stamp,$(1)) $(if $(2),$(STAMPS)/$(1).step)
endef
step_of = $$(cat $(STAMPS)/$(1).step)

# ============================================================================ the stages
# Each block: what the stage does, its knobs (`VAR ?= <the script flag's default>`; presets above
# override some), the flags they become, what is recorded, and the rule. Knob defaults must equal
# the scripts' argparse defaults: tests/test_make_defaults.py checks every one.
# (No trailing comments on assignment lines: the blanks would become part of the values.)

# ---------------------------------------------------------------------------- data
# pretraining shards into base_data/ (downloaded, or built from the embedded corpus)
# DATA_SHARDS: every preset sets it (nanochat.dataset's -n has no fixed default)
DATA_SOURCE ?= auto
data_cmds := dataset
dataset_flags := num-shards=DATA_SHARDS source=DATA_SOURCE
data_args := DATA_ARGS
DATA_ARGS ?=
data_code := nanochat/dataset.py nanochat/embedded_corpus.py
data_params := $(call params_of,data)
data_outputs := base_data

$(call stamp,data): | $(call deps_of,data) $(VENV_DEP)
	$(call begin,data)
	$(PY) -m nanochat.dataset $(call flags,dataset) $(DATA_ARGS)
	$(call finish,data)

# ---------------------------------------------------------------------------- tokenizer
# train the BPE tokenizer on the shards, then evaluate it (tokenizer/, report section)
VOCAB_SIZE ?= 32768
TOK_MAX_CHARS ?= 2000000000
TOK_DOC_CAP ?= 10000
tokenizer_cmds := tok_train
tok_train_flags := vocab-size=VOCAB_SIZE max-chars=TOK_MAX_CHARS doc-cap=TOK_DOC_CAP
tokenizer_args := TOK_ARGS
TOK_ARGS ?=
tokenizer_code := nanochat/tokenizer.py scripts/tok_train.py
tokenizer_params := $(call params_of,tokenizer)
tokenizer_outputs := tokenizer

$(call stamp,tokenizer): | $(call deps_of,tokenizer) $(VENV_DEP)
	$(call begin,tokenizer)
	$(PY) -m scripts.tok_train $(call flags,tok_train) $(TOK_ARGS)
	$(PY) -m scripts.tok_eval
	$(call finish,tokenizer)

# ---------------------------------------------------------------------------- pretrain
# the base model: train (base_checkpoints/$(MODEL_TAG)), bits-per-byte, CORE eval
DEPTH ?= 20
ASPECT_RATIO ?= 64
HEAD_DIM ?= 128
MAX_SEQ_LEN ?= 2048
WINDOW_PATTERN ?= SSSL
TOTAL_BATCH_SIZE ?= 524288
NUM_ITERATIONS ?= -1
TARGET_PARAM_DATA_RATIO ?= 20
EMBEDDING_LR ?= 0.3
UNEMBEDDING_LR ?= 0.004
MATRIX_LR ?= 0.02
WEIGHT_DECAY ?= 0.0
WARMUP_RATIO ?= 0.0
WARMDOWN_RATIO ?= 0.5
FINAL_LR_FRAC ?= 0.0
# 1 = fp8 matmuls in the transformer blocks (GPUs of compute capability >= 8.9)
FP8 ?= 0
EVAL_TOKENS ?= 10485760
CORE_MAX_PER_TASK ?= -1
# the checkpoint directory's name, also what every later stage loads (base_train's own default)
MODEL_TAG ?= d$(DEPTH)
DEVICE_BATCH_SIZE ?= 32
pretrain_cmds := base_train base_loss base_eval
base_train_flags := depth=DEPTH aspect-ratio=ASPECT_RATIO head-dim=HEAD_DIM max-seq-len=MAX_SEQ_LEN \
  window-pattern=WINDOW_PATTERN total-batch-size=TOTAL_BATCH_SIZE num-iterations=NUM_ITERATIONS \
  target-param-data-ratio=TARGET_PARAM_DATA_RATIO embedding-lr=EMBEDDING_LR unembedding-lr=UNEMBEDDING_LR \
  matrix-lr=MATRIX_LR weight-decay=WEIGHT_DECAY warmup-ratio=WARMUP_RATIO warmdown-ratio=WARMDOWN_RATIO \
  final-lr-frac=FINAL_LR_FRAC eval-tokens=EVAL_TOKENS model-tag=MODEL_TAG
base_train_switches := fp8=FP8
base_loss_flags := split-tokens=EVAL_TOKENS
base_eval_flags := max-per-task=CORE_MAX_PER_TASK
pretrain_args := BASE_ARGS
BASE_ARGS ?=
pretrain_exec := DEVICE_BATCH_SIZE
pretrain_code := nanochat/gpt.py nanochat/fp8.py nanochat/optim.py nanochat/dataloader.py nanochat/training.py scripts/base_train.py
pretrain_params := $(call params_of,pretrain)
# what later stages load: the final step's number, weights and meta
ckpt_outputs = .stamps/$(2).step $(1)/$(MODEL_TAG)/model_{step}.pt $(1)/$(MODEL_TAG)/meta_{step}.json
pretrain_outputs = $(call ckpt_outputs,base_checkpoints,pretrain)

$(call stamp,pretrain): | $(call deps_of,pretrain) $(VENV_DEP)
	$(call begin,pretrain,step)
	$(RUN_DIST) -m scripts.base_train -- --run=$(WANDB_RUN) --device-type=$(DEVICE_TYPE) --device-batch-size=$(DEVICE_BATCH_SIZE) \
	  $(call flags,base_train) --resume=$(call resume_mode,pretrain) --record-output=$(STAMPS)/pretrain.step $(BASE_ARGS)
	$(RUN_DIST) -m scripts.base_loss -- --device-type=$(DEVICE_TYPE) --device-batch-size=$(DEVICE_BATCH_SIZE) \
	  --model-tag=$(MODEL_TAG) --step=$(call step_of,pretrain) $(call flags,base_loss)
	$(RUN_DIST) -m scripts.base_eval -- --device-type=$(DEVICE_TYPE) \
	  --model-tag=$(MODEL_TAG) --step=$(call step_of,pretrain) $(call flags,base_eval)
	$(call finish,pretrain)

# every chat stage ends with scripts.chat_eval of its model
CHAT_EVAL_MAX ?= -1
CHAT_MAX_NEW_TOKENS ?= 512
chat_eval_flags := max-problems=CHAT_EVAL_MAX max-new-tokens=CHAT_MAX_NEW_TOKENS
chat_eval = $(RUN_DIST) -m scripts.chat_eval -- --device-type=$(DEVICE_TYPE) -i $(1) -g $(MODEL_TAG) -s $(call step_of,$(2)) \
  $(call flags,chat_eval)

# ---------------------------------------------------------------------------- midtrain
# the base model on conversations (mid_checkpoints/), then its chat eval. Its learning rates are
# mid_train's own (MID_ARGS='--embedding-lr=...' to change them); its sequence length is the model's.
MID_ITERATIONS ?= -1
MID_TOTAL_BATCH_SIZE ?= 524288
MID_INIT_LR_FRAC ?= 1.0
MID_EVAL_TOKENS ?= 10485760
midtrain_cmds := mid_train chat_eval
mid_train_flags := num-iterations=MID_ITERATIONS total-batch-size=MID_TOTAL_BATCH_SIZE init-lr-frac=MID_INIT_LR_FRAC \
  eval-tokens=MID_EVAL_TOKENS
midtrain_args := MID_ARGS
MID_ARGS ?=
midtrain_exec := DEVICE_BATCH_SIZE
midtrain_code := nanochat/training.py scripts/mid_train.py
midtrain_params := $(call params_of,midtrain)
midtrain_outputs = $(call ckpt_outputs,mid_checkpoints,midtrain)

$(call stamp,midtrain): | $(call deps_of,midtrain) $(VENV_DEP)
	$(call begin,midtrain,step)
	$(RUN_DIST) -m scripts.mid_train -- --run=$(WANDB_RUN) --device-type=$(DEVICE_TYPE) --device-batch-size=$(DEVICE_BATCH_SIZE) \
	  --model-tag=$(MODEL_TAG) --model-step=$(call step_of,pretrain) $(call flags,mid_train) \
	  --resume=$(call resume_mode,midtrain) --record-output=$(STAMPS)/midtrain.step $(MID_ARGS)
	$(call chat_eval,mid,midtrain)
	$(call finish,midtrain)

# ---------------------------------------------------------------------------- sft
# supervised finetuning from the midtrained model (chatsft_checkpoints/), then its chat eval
SFT_EPOCHS ?= 1
SFT_ITERATIONS ?= -1
SFT_TARGET_EXAMPLES ?= 32
SFT_INIT_LR_FRAC ?= 0.02
SFT_EVAL_STEPS ?= 100
# problems per in-training MMLU/ARC-Easy accuracy (the stage's chat eval measures them again)
SFT_METRICS_MAX ?= 1024
SFT_DEVICE_BATCH_SIZE ?= 4
sft_cmds := chat_sft chat_eval
chat_sft_flags := num-epochs=SFT_EPOCHS num-iterations=SFT_ITERATIONS target-examples-per-step=SFT_TARGET_EXAMPLES \
  init-lr-frac=SFT_INIT_LR_FRAC eval-steps=SFT_EVAL_STEPS eval-metrics-max-problems=SFT_METRICS_MAX
sft_args := SFT_ARGS
SFT_ARGS ?=
sft_exec := SFT_DEVICE_BATCH_SIZE
sft_code := nanochat/training.py scripts/chat_sft.py
sft_params := $(call params_of,sft)
sft_outputs = $(call ckpt_outputs,chatsft_checkpoints,sft)

$(call stamp,sft): | $(call deps_of,sft) $(VENV_DEP)
	$(call begin,sft,step)
	$(RUN_DIST) -m scripts.chat_sft -- --run=$(WANDB_RUN) --device-type=$(DEVICE_TYPE) --device-batch-size=$(SFT_DEVICE_BATCH_SIZE) \
	  --source=mid --model-tag=$(MODEL_TAG) --model-step=$(call step_of,midtrain) $(call flags,chat_sft) \
	  --resume=$(call resume_mode,sft) --record-output=$(STAMPS)/sft.step $(SFT_ARGS)
	$(call chat_eval,sft,sft)
	$(call finish,sft)

# ---------------------------------------------------------------------------- rl (optional)
# RL on GSM8K from the SFT model (chatrl_checkpoints/), then its chat eval
RL_EPOCHS ?= 1
RL_ITERATIONS ?= -1
RL_EXAMPLES_PER_STEP ?= 16
RL_SAMPLES ?= 16
RL_MAX_NEW_TOKENS ?= 256
RL_TEMPERATURE ?= 1.0
RL_LR_FRAC ?= 0.05
RL_EVAL_EXAMPLES ?= 400
RL_DEVICE_BATCH_SIZE ?= 8
rl_cmds := chat_rl chat_eval
chat_rl_flags := num-epochs=RL_EPOCHS num-iterations=RL_ITERATIONS examples-per-step=RL_EXAMPLES_PER_STEP \
  num-samples=RL_SAMPLES max-new-tokens=RL_MAX_NEW_TOKENS temperature=RL_TEMPERATURE init-lr-frac=RL_LR_FRAC \
  eval-examples=RL_EVAL_EXAMPLES
rl_args := RL_ARGS
RL_ARGS ?=
rl_exec := RL_DEVICE_BATCH_SIZE
rl_code := nanochat/training.py nanochat/rl.py scripts/chat_rl.py
rl_params := $(call params_of,rl)
rl_outputs = $(call ckpt_outputs,chatrl_checkpoints,rl)

$(call stamp,rl): | $(call deps_of,rl) $(VENV_DEP)
	$(call begin,rl,step)
	$(RUN_DIST) -m scripts.chat_rl -- --run=$(WANDB_RUN) --device-type=$(DEVICE_TYPE) --device-batch-size=$(RL_DEVICE_BATCH_SIZE) \
	  --source=sft --model-tag=$(MODEL_TAG) --model-step=$(call step_of,sft) $(call flags,chat_rl) \
	  --resume=$(call resume_mode,rl) --record-output=$(STAMPS)/rl.step $(RL_ARGS)
	$(call chat_eval,rl,rl)
	$(call finish,rl)

# ---------------------------------------------------------------------------- report
# report.md from the stage sections: rebuilt when missing or any stage was rebuilt since (its
# stamp records their ids)
$(REPORT): | $(call deps_of,report) $(VENV_DEP)
	$(call take_lock,report)
	$(if $(filter 0,$(NODE_RANK)),$(PY) -m nanochat.report generate)
	$(call finish,report)

# ============================================================================ validation
# Pure make functions: instant, no subprocess, nothing touched; an error here stops make while it
# still parses, before any recipe runs.
strip_digits = $(subst 9,,$(subst 8,,$(subst 7,,$(subst 6,,$(subst 5,,$(subst 4,,$(subst 3,,$(subst 2,,$(subst 1,,$(subst 0,,$(1)))))))))))
is_posint = $(and $(strip $(1)),$(if $(strip $(call strip_digits,$(1))),,y),$(if $(subst 0,,$(1)),y))
is_int = $(if $(filter 0,$(1)),y,$(call is_posint,$(patsubst -%,%,$(1))))
has_digit = $(if $(call eq,$(call strip_digits,$(1)),$(1)),,y)
is_number = $(and $(call has_digit,$(1)),$(if $(strip $(subst e,,$(subst E,,$(subst .,,$(subst -,,$(subst +,,$(call strip_digits,$(1)))))))),,y))
check_posint = $(if $(call is_posint,$($(1))),,$(error $(1)=$($(1)) must be a positive integer (e.g. $(1)=$(2))))
check_int = $(if $(call is_int,$($(1))),,$(error $(1)=$($(1)) must be an integer (-1 = automatic)))
check_number = $(if $(call is_number,$($(1))),,$(error $(1)=$($(1)) must be a number (e.g. $(1)=$(2))))
check_noquote = $(if $(findstring ',$($(1))),$(error $(1) must not contain a single quote))
# process counts for parse-time arithmetic: 1 while NPROC / NNODES is not a number (the validation
# below refuses it; `make help` must still print)
node_procs = $(if $(call is_posint,$(NPROC)),$(NPROC),1)
all_procs = $(node_procs) * $(if $(call is_posint,$(NNODES)),$(NNODES),1)

# CPU threads per process (an execution setting, in no stamp; the environment or command line wins):
# on CPU this node's cores split over its processes, so one process gets them all (torchrun alone
# would pin each to 1); on GPUs 1, the setting every GPU benchmark in bench/ used. Computed before
# the validation so that `make help` shows it.
ifndef OMP_NUM_THREADS
  ifeq ($(DEVICE_TYPE),cpu)
    OMP_NUM_THREADS := $(shell n=$$(nproc 2>/dev/null || echo 1); t=$$(( n / $(node_procs) )); echo $$(( t > 0 ? t : 1 )))
  else
    OMP_NUM_THREADS := 1
  endif
endif

ifneq ($(filter-out help,$(or $(MAKECMDGOALS),help)),)
$(foreach v,NPROC NNODES DEPTH VOCAB_SIZE MAX_SEQ_LEN DATA_SHARDS TOK_MAX_CHARS TOK_DOC_CAP ASPECT_RATIO HEAD_DIM TOTAL_BATCH_SIZE DEVICE_BATCH_SIZE EVAL_TOKENS MID_TOTAL_BATCH_SIZE MID_EVAL_TOKENS SFT_EPOCHS SFT_DEVICE_BATCH_SIZE SFT_TARGET_EXAMPLES SFT_EVAL_STEPS CHAT_MAX_NEW_TOKENS RL_EPOCHS RL_EXAMPLES_PER_STEP RL_SAMPLES RL_MAX_NEW_TOKENS RL_EVAL_EXAMPLES RL_DEVICE_BATCH_SIZE,$(call check_posint,$(v),4))
$(foreach v,NUM_ITERATIONS MID_ITERATIONS SFT_ITERATIONS SFT_METRICS_MAX CHAT_EVAL_MAX CORE_MAX_PER_TASK NODE_RANK RL_ITERATIONS,$(call check_int,$(v)))
$(foreach v,EMBEDDING_LR UNEMBEDDING_LR MATRIX_LR WEIGHT_DECAY WARMUP_RATIO WARMDOWN_RATIO FINAL_LR_FRAC TARGET_PARAM_DATA_RATIO MID_INIT_LR_FRAC SFT_INIT_LR_FRAC RL_LR_FRAC RL_TEMPERATURE,$(call check_number,$(v),0.02))
$(foreach v,DATA_ARGS TOK_ARGS BASE_ARGS MID_ARGS SFT_ARGS RL_ARGS WANDB_RUN MODEL_TAG,$(call check_noquote,$(v)))
$(if $(filter 0 1,$(FP8)),,$(error FP8=$(FP8) must be 0 or 1))
$(if $(filter 0 1,$(RL)),,$(error RL=$(RL) must be 0 or 1 (1 = speedrun also runs the rl stage)))
$(if $(filter 1,$(RL_SAMPLES)),$(error RL_SAMPLES=1 gives every sample the group's own reward (no learning signal): use RL_SAMPLES>=2))
$(if $(filter cpu cuda mps,$(DEVICE_TYPE)),,$(error DEVICE_TYPE=$(DEVICE_TYPE) must be cpu, cuda or mps))
$(if $(filter L S,$(subst S,S ,$(subst L,L ,$(WINDOW_PATTERN)))),,$(error WINDOW_PATTERN=$(WINDOW_PATTERN) must be letters S and L, e.g. SSSL))
$(if $(strip $(subst S,,$(subst L,,$(WINDOW_PATTERN)))),$(error WINDOW_PATTERN=$(WINDOW_PATTERN) must be letters S and L, e.g. SSSL))
ifeq ($(DEVICE_TYPE),cuda)
  ifeq ($(NGPUS),0)
    $(error DEVICE_TYPE=cuda but no NVIDIA GPU is visible: use DEVICE_TYPE=cpu PRESET=tiny, or check the driver with `make doctor`)
  endif
  ifneq ($(shell test $(NPROC) -le $(NGPUS) && echo ok),ok)
    $(error NPROC=$(NPROC) is larger than the $(NGPUS) GPU(s) visible: set NPROC<=$(NGPUS))
  endif
endif
# batch sizes must divide: refused here, before any recipe removes a stamp (shell arithmetic, read-only)
rem = $(shell echo $$(( $(1) % ($(2)) )))
$(if $(filter 0,$(call rem,$(TOTAL_BATCH_SIZE),$(DEVICE_BATCH_SIZE)*$(MAX_SEQ_LEN)*$(NPROC)*$(NNODES))),,$(error TOTAL_BATCH_SIZE=$(TOTAL_BATCH_SIZE) is not a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN x NPROC x NNODES = $(DEVICE_BATCH_SIZE) x $(MAX_SEQ_LEN) x $(NPROC) x $(NNODES): change one of them))
$(if $(filter 0,$(call rem,$(MID_TOTAL_BATCH_SIZE),$(DEVICE_BATCH_SIZE)*$(MAX_SEQ_LEN)*$(NPROC)*$(NNODES))),,$(error MID_TOTAL_BATCH_SIZE=$(MID_TOTAL_BATCH_SIZE) is not a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN x NPROC x NNODES = $(DEVICE_BATCH_SIZE) x $(MAX_SEQ_LEN) x $(NPROC) x $(NNODES): change one of them))
$(if $(filter 0,$(call rem,$(SFT_TARGET_EXAMPLES),$(SFT_DEVICE_BATCH_SIZE)*$(NPROC)*$(NNODES))),,$(error SFT_TARGET_EXAMPLES=$(SFT_TARGET_EXAMPLES) is not a multiple of SFT_DEVICE_BATCH_SIZE x NPROC x NNODES = $(SFT_DEVICE_BATCH_SIZE) x $(NPROC) x $(NNODES): change one of them))
# (only where rl can run: a process count that does not divide it must not block the other stages)
ifneq ($(or $(filter 1,$(RL)),$(filter rl redo-rl,$(MAKECMDGOALS))),)
$(if $(filter 0,$(call rem,$(RL_EXAMPLES_PER_STEP),$(NPROC)*$(NNODES))),,$(error RL_EXAMPLES_PER_STEP=$(RL_EXAMPLES_PER_STEP) is not a multiple of NPROC x NNODES = $(NPROC) x $(NNODES): change one of them))
endif

# ONE interpreter start per make call (stdlib only, no torch): refuses a base dir that is a file, or a
# deleting verb aimed at /, $HOME or this checkout (resolved paths, however spelled), in one line;
# else prints `ok` and the stale stages, which get FORCE. Never writes anything.
PIPE := $(shell $(SYSTEM_PYTHON) -m nanochat.pipeline check $(call pipe_stages,$(ALL_STAGES) report) --redo '$(REDO)' \
  --home $(call q,$(HOME)) --repo $(call q,$(CURDIR)) \
  $(if $(filter clean clean-checkpoints distclean,$(MAKECMDGOALS)),--deletes $(call q,NANOCHAT_BASE_DIR=$(B))) \
  $(if $(filter distclean,$(MAKECMDGOALS)),--deletes $(call q,VENV=$(VENV))) 2>&1)
$(if $(filter ok,$(firstword $(PIPE))),,$(error $(or $(PIPE),nanochat.pipeline check printed nothing: is SYSTEM_PYTHON=$(SYSTEM_PYTHON) a working python3?)))
$(foreach s,$(wordlist 2,$(words $(PIPE)),$(PIPE)),$(eval $(if $(filter report,$(s)),$(REPORT),$(call stamp,$(s))): FORCE))
endif

export OMP_NUM_THREADS

# ============================================================================ user verbs
.PHONY: help speedrun data tokenizer pretrain midtrain sft rl report chat serve status dag clean \
        clean-checkpoints distclean test test-all soak doctor $(addprefix redo-,$(ALL_STAGES)) FORCE

help: ## show verbs and variables (default goal)
	@echo "nanochat pipeline -- usage: make <verb> [VAR=value ...]"
	@echo
	@grep -hE '^[a-z][a-zA-Z_%-]*:.*## ' $(firstword $(MAKEFILE_LIST)) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (current values; set on the command line or in the environment):"
	@$(foreach v,NANOCHAT_BASE_DIR PRESET DEVICE_TYPE NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT RDZV_ENDPOINT USE_LIBUV \
	   WANDB_RUN OMP_NUM_THREADS RL TRACK_CODE TORCH_SPEC PIP_EXTRA PY_EXTRAS VENV PY PROMPT PORT HOST TRIALS SEED CONFIRM,printf '  %-24s %s\n' '$(v)' $(call q,$($(v)));)
	@$(foreach s,$(ALL_STAGES),echo; echo "  $(s) ($(foreach c,$($(s)_cmds),$(c))): semantic, then execution-only"; \
	   $(foreach v,$(call knobs,$(s)) $($(s)_args) $($(s)_exec),printf '  %-24s %s\n' '$(v)' $(call q,$($(v)));))
	@echo
	@echo "A stage's semantic variables make it (and what follows) stale; NPROC, DEVICE_BATCH_SIZE,"
	@echo "SFT_DEVICE_BATCH_SIZE, RL_DEVICE_BATCH_SIZE, DEVICE_TYPE, OMP_NUM_THREADS and WANDB_RUN never do. Defaults are"
	@echo "the scripts' own argparse defaults; a PRESET changes some. See README.md, 'The pipeline'."

speedrun: $(REPORT) ## run every stage that is stale: data, tokenizer, pretrain, midtrain, sft, (rl if RL=1,) report
data: $(call stamp,data) ## download (or build the embedded) pretraining shards
tokenizer: $(call stamp,tokenizer) ## train + evaluate the BPE tokenizer
pretrain: $(call stamp,pretrain) ## base model: train, bits-per-byte, CORE eval
midtrain: $(call stamp,midtrain) ## midtraining + chat eval (mid)
sft: $(call stamp,sft) ## chat SFT + chat eval (sft)
rl: $(call stamp,rl) ## optional: RL on GSM8K from the SFT model + chat eval (rl); RL=1 adds it to speedrun
report: $(REPORT) ## assemble report.md from the stage sections
redo-%: ## force stage % (data, tokenizer, pretrain, midtrain, sft, rl) and everything after it
$(addprefix redo-,$(ALL_STAGES)): $(REPORT)
	@:
redo-rl: $(call stamp,rl)

status: ## each stage: up to date, or stale and why (never writes anything)
	@$(SYSTEM_PYTHON) -m nanochat.pipeline status $(call pipe_stages,$(STAGES) report)

dag: ## print the stage graph (Mermaid)
	@$(SYSTEM_PYTHON) -m nanochat.pipeline dag $(foreach s,$(STAGES),--stage $(call q,$(s)|$($(s)_deps)|))

chat: | $(VENV_DEP) ## talk to the newest SFT model (PROMPT='...' for one answer)
	@test -f $(STAMPS)/sft.step || { echo "error: no SFT model in $(B): run \`make sft\` first" >&2; exit 1; }
	$(PY) -m scripts.chat_cli -i sft -g $(MODEL_TAG) -s $(call step_of,sft) --device-type=$(DEVICE_TYPE) $(if $(PROMPT),-p $(call q,$(PROMPT)))

serve: | $(VENV_DEP) ## web chat with the newest SFT model on http://HOST:PORT/ (PORT=8000 HOST=127.0.0.1)
	@test -f $(STAMPS)/sft.step || { echo "error: no SFT model in $(B): run \`make sft\` first" >&2; exit 1; }
	$(PY) -m scripts.chat_web -i sft -g $(MODEL_TAG) -s $(call step_of,sft) --device-type=$(DEVICE_TYPE) --host $(call q,$(HOST)) --port $(call q,$(PORT))

test: | $(VENV_DEP) ## run the test suite
	$(PY) -m pytest -q tests -m "not slow"
test-all: | $(VENV_DEP) ## run every test, slow ones too
	$(PY) -m pytest -q tests

soak: | $(VENV_DEP) ## fault-injection soak: kill `make speedrun` at random moments, check nothing is lost (TRIALS=50)
	$(PY) -m bench.fault_soak --trials $(TRIALS) --seed $(SEED)

doctor: | $(VENV_DEP) ## probe the toolchain: torch, CUDA, GPU, driver
	$(PY) -m nanochat.doctor

clean: ## delete the report and all stamps (outputs stay: reruns resume/skip cheaply)
	@echo "deleting $(B)/report and $(STAMPS)"
	rm -rf -- '$(B)/report' '$(STAMPS)'

clean-checkpoints: ## delete model checkpoints (base, mid, sft, rl) and their stamps
	@echo "deleting checkpoints under $(B) and the pretrain/midtrain/sft/rl stamps"
	rm -rf -- '$(B)/base_checkpoints' '$(B)/mid_checkpoints' '$(B)/chatsft_checkpoints' '$(B)/chatrl_checkpoints'
	rm -f -- $(foreach s,pretrain midtrain sft rl,'$(call stamp,$(s))' '$(STAMPS)/$(s).step')

distclean: ## delete EVERYTHING under NANOCHAT_BASE_DIR and .venv (needs CONFIRM=yes)
	@echo "this deletes $(B) (data, tokenizer, checkpoints, report) and $(VENV)"
	@if [ "$(CONFIRM)" != yes ]; then echo "nothing deleted: rerun as \`make distclean CONFIRM=yes\`"; exit 1; fi
	rm -rf -- '$(B)' '$(VENV)'

# ============================================================================ the virtualenv
# Content-tracked like a stage: reinstalled when pyproject.toml's content or TORCH_SPEC changes.
venv_params := torch=$(TORCH_SPEC);pip_extra=$(PIP_EXTRA);extras=$(PY_EXTRAS);pyproject=$(firstword $(shell sha256sum pyproject.toml 2>/dev/null))
$(VENV)/.installed: $(if $(call eq,$(strip $(file <$(VENV)/.installed)),$(strip $(venv_params))),,FORCE)
	@echo "bootstrapping $(VENV) with $(TORCH_SPEC) (see TORCH_SPEC in README.md)"
	rm -f $@
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) '$(TORCH_SPEC)'
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(PIP_EXTRA) -e '.[$(PY_EXTRAS)]'
	@printf '%s' $(call q,$(venv_params)) > $@.tmp && mv -f $@.tmp $@
