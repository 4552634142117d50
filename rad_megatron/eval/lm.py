"""lm-eval model "rad_megatron": our Megatron hybrid (any attention/Mamba layout, any TP size) behind lm-eval's LM API.

    lm_eval --model rad_megatron --model_args ckpt=CKPT,tp=2      (through `python -m rad_megatron.eval`, which
                                                                   registers this class and our task folder)
    model_args: ckpt=rad_megatron checkpoint | hf=HF Llama / MIL folder or .gguf (neither: SmolLM2-135M-Instruct),
                tp, batch_size, max_length, max_gen_toks, seed

Under TP all ranks form one logical lm-eval worker (rank 0 of a world of 1, like lm-eval's megatron_lm backend in
TP mode): every rank receives the same requests in the same order and calls the model collectively; lm-eval returns
results on local rank 0 only. Requests are sorted longest first and batched (lm-eval's Collator): log-likelihoods in
one right-padded forward per batch, generations on our batched KV/SSM-cache engine.
"""

from __future__ import annotations


from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from rad_megatron.errors import RadError
from rad_megatron.eval.generation import generate_until_batch, sampling_from
from rad_megatron.eval.scoring import score_batch

MODEL_ARGS = ("ckpt", "hf", "tp", "batch_size", "max_length", "max_gen_toks", "seed")


def _batch_size(value) -> int:
    # lm-eval's "auto" probes memory by trial and error on CUDA; we take a fixed default instead.
    if isinstance(value, str) and value.startswith("auto"):
        return 8
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise RadError(f"batch_size={value!r}: give a positive integer") from None
    if size < 1:
        raise RadError(f"batch_size={value!r}: give a positive integer")
    return size


@register_model("rad_megatron", "rad-mcore")
class RadLM(TemplateLM):
    """lm-eval's loglikelihood, loglikelihood_rolling and generate_until on a rad_megatron model."""

    def __init__(self, ckpt: str | None = None, hf: str | None = None, tp: int | None = None, batch_size=8,
                 max_length: int | None = None, max_gen_toks: int = 256, seed: int = 1234, device=None,
                 max_batch_size=None, **unknown):
        # `device` and `max_batch_size` come from lm-eval's generic options; the device follows the launch
        # (init_distributed) and the batch size is fixed.
        super().__init__()
        if unknown:
            raise RadError(f"unknown --model_args {', '.join(sorted(unknown))} for rad_megatron; "
                           f"known: {', '.join(MODEL_ARGS)}")
        from rad_megatron.distributed.init import init_launched
        from rad_megatron.sources import load_model_and_tokenizer

        self.ctx = init_launched(int(tp) if tp else None, seed=int(seed))
        if self.ctx.dp != 1:
            raise RadError(f"tp={self.ctx.tp} on {self.ctx.world_size} ranks: evaluation runs one model over all "
                           f"ranks; launch torchrun --nproc-per-node {self.ctx.tp} (or set tp to the world size)")
        model, tokenizer = load_model_and_tokenizer(ckpt, hf, self.ctx)
        self._setup(model, tokenizer, str(ckpt or model.rad_meta.get("source")), batch_size, max_length,
                    max_gen_toks, seed)

    @classmethod
    def from_model(cls, model, tokenizer, ctx, batch_size=8, max_length: int | None = None, max_gen_toks: int = 256,
                   seed: int = 1234, source: str = "in-memory") -> RadLM:
        """Wrap a model already built on these ranks (e.g. right after distillation) without reloading it."""
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm.ctx = ctx
        lm._setup(model, tokenizer, source, batch_size, max_length, max_gen_toks, seed)
        return lm

    def _setup(self, model, tokenizer, source, batch_size, max_length, max_gen_toks, seed) -> None:
        self.model = model.to(self.ctx.device).eval()
        self.tokenizer = tokenizer
        self.source = source
        self._batch_size = _batch_size(batch_size)
        self._max_length = int(max_length or model.rad_config.max_position_embeddings)
        self._max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    # ---- what lm-eval asks of a model
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # the token an empty context starts from: BOS when the tokenizer has one, else EOS (as lm-eval's HF backend)
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def get_model_info(self) -> dict:
        from rad_megatron.model.layout import layout_to_pattern

        return {"rad_source": self.source, "rad_tp": self.ctx.tp,
                "rad_pattern": layout_to_pattern(self.model.rad_config.layout)}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # A string that already starts with BOS (a chat-templated prompt) gets no second one.
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            add_special_tokens = False
        extra = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **extra)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ---- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        for _, _, cont in requests:
            if not cont or len(cont) > self.max_length:
                raise RadError(f"a continuation of {len(cont)} tokens cannot be scored with max_length="
                               f"{self.max_length}")
        order = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        bar = tqdm(total=len(requests), disable=disable_tqdm or not self.ctx.is_main, desc="loglikelihood")
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            scored = score_batch(self.model, [(ctx, cont) for _, ctx, cont in chunk], self.max_length)
            for (key, _, _), answer in zip(chunk, scored):
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                results.append(answer)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text scored in disjoint windows of at most max_length tokens, from the prefix token."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(i)
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scored):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        order = Collator([req.args for req in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                         group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        bar = tqdm(total=len(requests), disable=disable_tqdm or not self.ctx.is_main, desc="generate_until")
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs = zip(*chunk)
            kwargs = normalize_gen_kwargs(dict(all_kwargs[0]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - max_gen_toks
            if room <= 0:
                raise RadError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in max_length="
                               f"{self.max_length}")
            prompts = [self.tok_encode(c)[-room:] for c in contexts]
            texts = generate_until_batch(self.model, self.tokenizer, prompts, until, max_gen_toks,
                                         sampling_from(kwargs, self.seed))
            for context, gen_kwargs, text in zip(contexts, all_kwargs, texts):
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                results.append(text)
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)
