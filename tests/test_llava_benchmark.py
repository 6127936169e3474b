"""benchmarks/llava_table5.py end to end on a tiny random LLaVA saved as a llava-hf checkpoint
(offline word-level tokenizer, CLIP image processor): every variant answered and timed, the
unreduced answers those of the plain model, and each refusal in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip('transformers')
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
import llava_table5  # noqa: E402

SIDE, PATCH = 168, 14   # 144 patches; 24 layers, so the budget layers are LLaVA-1.5's
WORDS = ['<pad>', '<s>', '</s>', '<unk>', 'USER', 'ASSISTANT', ':', '?', 'what', 'is', 'the', 'color',
         'of', 'red', 'blue', 'square', 'shape', 'how', 'many']
PAIRS = {'red': ('what is the color of the square?', 'Red.'), 'blue': ('what shape is blue?', None)}
METHODS = ['transform', 'tome', 'prumerge']
BUDGETS = [32, 64]


def tiny_processor() -> LlavaProcessor:
    words = WORDS + [f'w{i}' for i in range(63 - len(WORDS))] + ['<image>']   # <image>: id 63
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()   # words joined by spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token='<s>', eos_token='</s>',
                                   pad_token='<pad>', unk_token='<unk>', additional_special_tokens=['<image>'],
                                   padding_side='left', model_input_names=['input_ids', 'attention_mask'])
    images = CLIPImageProcessor(size={'shortest_edge': SIDE}, crop_size={'height': SIDE, 'width': SIDE})
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=PATCH,
                          vision_feature_select_strategy='default', num_additional_image_tokens=1)


def tiny_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=24, num_attention_heads=4,
                              image_size=SIDE, patch_size=PATCH)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=63,
                                                      pad_token_id=0)).eval()
    with torch.no_grad():   # HF's init is tiny (std 0.02): make the answers differ visibly
        for p in model.parameters():
            p.mul_(20 if p.dim() > 1 else 1)
    return model


def write_pairs(folder: Path, pairs: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (question, answer)) in enumerate(pairs.items()):
        pixels = np.random.RandomState(i).randint(0, 255, (90 + 10 * i, 120, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f'{name}.{"png" if i % 2 else "jpg"}')
        (folder / f'{name}.txt').write_text(question + '\n')
        if answer is not None:
            (folder / f'{name}.answer.txt').write_text(answer + '\n')
    return folder


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('llava')
    tiny_llava().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def pairs(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp('pairs'), PAIRS)


def plain_answers(checkpoint: Path, pairs: Path, max_new_tokens: int) -> dict:
    """The unpatched model's greedy answers, generated directly."""
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    answers = {}
    for name, (question, _) in PAIRS.items():
        image = Image.open(next(pairs.glob(f'{name}.*g'))).convert('RGB')
        inputs = processor(images=image, text=f'USER: <image>\n{question} ASSISTANT:', return_tensors='pt')
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers[name] = processor.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True).strip()
    return answers


def test_every_variant_answers_and_is_timed(checkpoint, pairs, tmp_path, capsys):
    out = tmp_path / 'llava.json'
    llava_table5.main(['--model', str(checkpoint), '--pairs', str(pairs), '--methods', *METHODS,
                       '--visual-tokens', *map(str, BUDGETS), '--max-new-tokens', '4', '--rounds', '2',
                       '--warmup', '0', '--device', 'cpu', '--out', str(out)])
    results = json.loads(out.read_text())
    assert set(results['provenance']) >= {'hardware', 'versions', 'commit', 'command', 'date'}
    names = ['unmodified'] + [f'{m}@{b}' for m in METHODS for b in BUDGETS]
    assert [v['name'] for v in results['variants']] == names
    assert results['variants'][0]['visual_tokens'] == 144
    assert [c['name'] for c in results['cases']] == sorted(PAIRS)
    for case in results['cases']:
        assert list(case['answers']) == names and all(isinstance(a, str) for a in case['answers'].values())
        for name in names:
            assert len(case['runs'][name]) == 2
            for run in case['runs'][name]:
                assert all(run[stage] > 0 for stage in llava_table5.STAGES)
                assert run['ttft_s'] >= run['vision_s'] + run['prefill_s']
                assert 1 <= run['new_tokens'] <= 4
            # Greedy decoding: every round of a variant generates the same answer length.
            assert len({run['new_tokens'] for run in case['runs'][name]}) == 1, name
        budget = {name: int(name.split('@')[1]) if '@' in name else 144 for name in names}
        prompt = case['runs']['unmodified'][0]['lm_prompt_tokens']
        assert all(case['runs'][name][0]['lm_prompt_tokens'] == prompt - 144 + budget[name] for name in names)
    assert set(results['summary']) == set(names)
    assert results['summary']['unmodified']['ttft_speedup'] == 1.0
    assert results['summary']['unmodified']['same_as_unmodified'] == 1
    assert all({'exact', 'contains', 'ttft_s', 'vision_s'} <= set(s) for s in results['summary'].values())
    plain = plain_answers(checkpoint, pairs, 4)
    assert {c['name']: c['answers']['unmodified'] for c in results['cases']} == plain
    assert any(plain.values())
    captured = capsys.readouterr()
    assert '| red | tome@32 |' in captured.out and '| prumerge@64 |' in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith('[round')]
    assert len(progress) == 2 * len(PAIRS)


def test_scores_ignore_case_punctuation_and_articles():
    assert llava_table5.scores('The red one.', ['Red']) == dict(exact=False, contains=True)
    assert llava_table5.scores('a Red!', ['red', 'crimson']) == dict(exact=True, contains=True)
    assert llava_table5.scores('reddish', ['red']) == dict(exact=False, contains=False)


@pytest.mark.parametrize('case,extra,message', [
    ('no_model', [], 'not a folder'),
    ('no_config', [], 'no config.json'),
    ('empty', [], 'no images'),
    ('no_question', [], 'a.png has no question (a.txt)'),
    ('no_image', [], 'b.txt has no image'),
    ('pairs', ['--methods', 'transform', 'foo'], "--methods foo: unknown method 'foo'"),
    ('pairs', ['--methods', 'transform:quick'], "unknown preset 'quick'"),
    ('pairs', ['--methods', 'hourglass'], 'clusters the token grid'),
    ('pairs', ['--methods', 'prumerge', '--visual-tokens', '32', '144'],
     '--visual-tokens 144 for prumerge: visual_tokens=144 is out of reach'),
    ('pairs', ['--methods', 'tome', '--visual-tokens', '4'],
     '--visual-tokens 4 for tome: visual_tokens=4 is out of reach'),
])
def test_refusals_are_one_line(case, extra, message, checkpoint, pairs, tmp_path, capsys):
    model, folder = checkpoint, pairs
    if case == 'no_model':
        model = tmp_path / 'nowhere'
    elif case == 'no_config':
        model = tmp_path / 'empty_model'
        model.mkdir()
    elif case != 'pairs':
        folder = tmp_path / case
        folder.mkdir()
        if case == 'no_question':
            Image.new('RGB', (8, 8)).save(folder / 'a.png')
        if case == 'no_image':
            write_pairs(folder, {'a': ('what?', None)})
            (folder / 'b.txt').write_text('what?\n')
    with pytest.raises(SystemExit) as exit_info:
        llava_table5.main(['--model', str(model), '--pairs', str(folder), '--device', 'cpu', *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_shell_wrapper_needs_both_folders(tmp_path):
    script = str(REPO / 'benchmarks' / 'llava_table5.sh')
    env = dict(os.environ, PY=sys.executable)
    usage = subprocess.run(['bash', script], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and 'MODEL_DIR PAIRS_DIR' in usage.stderr
    missing = subprocess.run(['bash', script, 'nowhere', str(tmp_path)], capture_output=True, text=True,
                             env=env, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith(f'--model {tmp_path / "nowhere"}: not a folder (give a local '
                                           'llava-hf checkpoint folder)')
