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
# Layout: the presets; the DAG; ONE BLOCK PER STAGE (its knobs, the flags they become, its rule) in
# DAG order; the user verbs. Machinery lives in included files: mk/setup.mk (toolchain, hardware,
# launch), mk/stamps.mk (knob words -> flags and stamp records, lock, begin/finish), mk/checks.mk
# (value validation, the one parse-time staleness check, the .venv rule).
#
# Defaults have ONE source of truth: the scripts' argparse defaults. Every semantic knob is still a
# make variable (so the stamp records the effective value, whether or not the user spelled out the
# default, and `make -n` prints the exact command), and each knob's default here is that script
# flag's default, which tests/test_make_defaults.py enforces: change a default in the script, and
# the test names the line to change here. A preset sets only what it changes. (Reading the
# defaults from the scripts at parse time would import torch on every `make` call, `make help`
# included; passing a flag only when its variable is set would make a stamp differ between
# `make pretrain` and `make pretrain EMBEDDING_LR=<its default>`.)

include mk/setup.mk

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
# verbs' own knobs: `make chat PROMPT=...`, `make serve PORT= HOST= ALLOWED_HOSTS=`, `make soak TRIALS= SEED=`, `make distclean CONFIRM=yes`
PROMPT ?=
PORT ?= 8000
HOST ?= 127.0.0.1
# names a reverse proxy serves the web chat under (`make serve ALLOWED_HOSTS='chat.lab.example'`)
ALLOWED_HOSTS ?=
CONFIRM ?=
TRIALS ?= 50
SEED ?= 0
# TRACK_CODE=1: a stage also goes stale when the CONTENT of its code changes (off by default:
# an edit to an eval helper should not silently retrain a 4-hour model)
TRACK_CODE ?= 0

include mk/stamps.mk

# ============================================================================ the stages
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

# Each block: what the stage does, its knobs (`VAR ?= <the script flag's default>`; presets above
# override some), the flags they become, what is recorded, and the rule. Knob defaults must equal
# the scripts' argparse defaults: tests/test_make_defaults.py checks every one.
# (No trailing comments on assignment lines: the blanks would become part of the values.)

# ---------------------------------------------------------------------------- data
# pretraining shards into base_data/ (downloaded, or built from the embedded corpus)
# DATA_SHARDS: every preset sets it (nanochat.dataset's -n has no fixed default)
DATA_SOURCE ?= fineweb
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
train_code := nanochat/training.py nanochat/startup.py nanochat/resume.py nanochat/dataloader.py nanochat/packer.py
pretrain_code := nanochat/gpt.py nanochat/gpt_config.py nanochat/loss.py nanochat/fp8.py nanochat/optim.py $(train_code) scripts/base_train.py
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
midtrain_code := $(train_code) scripts/mid_train.py
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
sft_code := $(train_code) scripts/chat_sft.py
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
rl_code := $(train_code) nanochat/rl.py scripts/chat_rl.py
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
	   WANDB_RUN OMP_NUM_THREADS RL TRACK_CODE PYCACHE TORCH_SPEC PIP_EXTRA PY_EXTRAS VENV PY PROMPT PORT HOST ALLOWED_HOSTS TRIALS SEED CONFIRM,printf '  %-24s %s\n' '$(v)' $(call q,$($(v)));)
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
	@test -f $(STAMPS)/sft.step || { echo "error: no SFT model in $(BASE): run \`make sft\` first" >&2; exit 1; }
	$(PY) -m scripts.chat_cli -i sft -g $(MODEL_TAG) -s $(call step_of,sft) --device-type=$(DEVICE_TYPE) $(if $(PROMPT),-p $(call q,$(PROMPT)))

serve: | $(VENV_DEP) ## web chat with the newest SFT model on http://HOST:PORT/ (PORT=8000 HOST=127.0.0.1)
	@test -f $(STAMPS)/sft.step || { echo "error: no SFT model in $(BASE): run \`make sft\` first" >&2; exit 1; }
	$(PY) -m scripts.chat_web -i sft -g $(MODEL_TAG) -s $(call step_of,sft) --device-type=$(DEVICE_TYPE) --host $(call q,$(HOST)) --port $(call q,$(PORT)) \
	  $(foreach h,$(ALLOWED_HOSTS),--allowed-host $(call q,$(h)))

test: | $(VENV_DEP) ## run the test suite
	$(PY) -m pytest -q tests -m "not slow"
test-all: | $(VENV_DEP) ## run every test, slow ones too
	$(PY) -m pytest -q tests

soak: | $(VENV_DEP) ## fault-injection soak: kill `make speedrun` at random moments, check nothing is lost (TRIALS=50)
	$(PY) -m bench.fault_soak --trials $(TRIALS) --seed $(SEED)

doctor: | $(VENV_DEP) ## probe the toolchain: torch, CUDA, GPU, driver
	$(PY) -m nanochat.doctor

clean: ## delete the report and all stamps (outputs stay: reruns resume/skip cheaply)
	@echo "deleting $(BASE)/report and $(STAMPS)"
	rm -rf -- '$(BASE)/report' '$(STAMPS)'

clean-checkpoints: ## delete model checkpoints (base, mid, sft, rl) and their stamps
	@echo "deleting checkpoints under $(BASE) and the pretrain/midtrain/sft/rl stamps"
	rm -rf -- '$(BASE)/base_checkpoints' '$(BASE)/mid_checkpoints' '$(BASE)/chatsft_checkpoints' '$(BASE)/chatrl_checkpoints'
	rm -f -- $(foreach s,pretrain midtrain sft rl,'$(call stamp,$(s))' '$(STAMPS)/$(s).step')

distclean: ## delete EVERYTHING under NANOCHAT_BASE_DIR and .venv (needs CONFIRM=yes)
	@echo "this deletes $(BASE) (data, tokenizer, checkpoints, report) and $(VENV)"
	@if [ "$(CONFIRM)" != yes ]; then echo "nothing deleted: rerun as \`make distclean CONFIRM=yes\`"; exit 1; fi
	rm -rf -- '$(BASE)' '$(VENV)'

include mk/checks.mk
