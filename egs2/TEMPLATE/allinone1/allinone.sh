#!/usr/bin/env bash
# All-in-one ASR recipe stages: one training run, every listed subsystem
# extracted, decoded, scored and reported. In the spirit of ESPnet's asr.sh
# (same option names and stage numbers where they coincide), written anew:
# the ESPnet wheel ships no asr.sh and no Kaldi utils/.
#
#   1  data preparation (local/data.sh)         10 statistics collection
#   2  speed perturbation (off by default)      11 all-in-one training (espnet2.bin.launch)
#   3  format the data dirs (dump/raw)          12 extract every listed subsystem
#   4  filter too long/short utterances         13 decode (--inference_nj jobs each)
#   5  token list (char, or sentencepiece bpe)  14 score with sclite (WER, CER)
#   15 baselines: each subsystem trained alone (off: --skip_baselines false)
#   16 report: RESULTS.md, results.json, wer_vs_size.png; the table is printed
#   17 pack each subsystem for the model zoo    18 upload (off; dry run by default)
#
# Stage 2, as in asr.sh: --speed_perturb_factors "0.9 1.0 1.1" writes
# data/<train_set>_sp (Kaldi's sp<f>- ids, sox speed); stages 3-18 then use it
# as the training set, and the default experiment name ends in _sp.
# Not included: asr.sh's language-model stages 6-9. --use_lm true, --lm_config
# and asr.sh's other options with no equivalent here are refused by name.
#
# Every stage logs to <asr_exp>/logs/stage<N>_<name>.log and can be re-run
# alone (--stage N --stop_stage N).
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (allinone.sh) $*"; }
fail() { log "ERROR: $*" >&2; exit 1; }
help_message=$(awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0")
command_line="$0$(printf ' %q' "$@")"

# ---- options -----------------------------------------------------------------
# The ONE list of options: `option NAME DEFAULT HELP` sets the default and
# records the name, so the parser and --help know every option declared here,
# wherever it is in the list.
option_names=()
option_help=()
option() {
    option_names+=("$1")
    printf -v "$1" '%s' "$2"
    option_help+=("$(printf '  --%-20s %-12s %s' "$1" "${2:-\"\"}" "$3")")
}
option stage 1 "first stage to run"
option stop_stage 10000 "last stage to run"
option skip_data_prep false "skip stages 1-5"
option skip_train false "skip stages 10-11"
option skip_extract false "skip stage 12"
option skip_eval false "skip stages 13-14"
option skip_baselines true "skip stage 15 (trains every subsystem alone: slow)"
option skip_report false "skip stage 16"
option skip_packing false "skip stage 17"
option skip_upload true "skip stage 18"
option ngpu 1 "GPUs per node for training (0: CPU)"
option train_threads 1 "intra-op threads of the training process (OMP_NUM_THREADS; 2 on an idle 2-core CPU)"
option num_nodes 1 "nodes for training (needs a cluster cmd, see cmd.sh)"
option nj 4 "parallel jobs for data formatting and statistics"
option inference_nj 4 "parallel decoding jobs per test set (each decodes every subsystem)"
option gpu_inference false "decode on GPU"
option python python3 "the python that has espnet-allinone installed"
option dumpdir dump "formatted data"
option expdir exp "experiments"
option lang en "language tag of the token list dir (data/<lang>_token_list)"
option train_set train "training data dir under data/"
option valid_set dev "validation data dir under data/"
option test_sets "test" "test data dirs under data/ (space separated; the first is reported)"
option local_data_opts "" "options for local/data.sh"
option speed_perturb_factors "" "stage 2, e.g. \"0.9 1.0 1.1\": train on data/<train_set>_sp (empty: no stage 2)"
option fs 16k "sampling rate of the audio (16k, 8k or Hz)"
option min_wav_duration 0.1 "seconds; shorter training utterances are dropped"
option max_wav_duration 20 "seconds; longer training utterances are dropped"
option token_type bpe "bpe or char"
option nbpe 30 "sentencepiece vocabulary size"
option bpemode unigram "sentencepiece model type"
option feats_normalize global_mvn "global_mvn: normalise with the stage-10 statistics; else as the train config says"
option asr_tag "" "default: the train config's name"
option asr_exp "" "default: <expdir>/asr_<asr_tag>"
option asr_stats_dir "" "default: <asr_exp>/stats"
option train_config "" "training YAML (model: allinone); required"
option inference_config "" "decoding YAML (asr_inference options)"
option asr_args "" "extra asr_train arguments"
option inference_args "" "extra asr_inference arguments"
option inference_asr_model auto "checkpoint in asr_exp to extract from; auto: valid.*.ave.pth, ..."
option inference_tag decode "decoding results go to <asr_exp>/<inference_tag>/<subsystem>/<set>"
option subsystems all "subsystems to extract/decode/report: all, or \"d6-w0.5-int4 d12-w1-fp\""
option extract_args "" "extra arguments for espnet_allinone.bin.extract"
option calibration_utts 50 "training utterances that re-estimate each subsystem's BatchNorm statistics at extraction (0: keep training's)"
option rtf_utts 10 "utterances timed for the real-time factor (0: none)"
option report_title "" "title of RESULTS.md (default: the experiment's name)"
option pack_args "" "extra arguments for espnet_allinone.bin.pack"
option hf_repo "" "Hub repo for stage 18, e.g. user/allinone-{subsystem}"
option upload_dry_run true "stage 18 writes the upload folder without uploading"

# The ONE list of asr.sh options this script does not have: `refuse NAME NOOP WHY`.
# --NAME is refused with "--NAME: WHY", never ignored, except with the value NOOP
# (asr.sh's default, a no-op here, e.g. --use_lm false); NOOP "-": no value is.
refused_names=()
refused_noop=()
refused_why=()
refuse() { refused_names+=("$1"); refused_noop+=("$2"); refused_why+=("$3"); }
lm_why="language-model stages 6-9 are not part of allinone.sh; ESPnet's asr_inference \
shallow-fusion options go to decoding through --inference_args (\"--lm_train_config C --lm_file F \
--lm_weight W\", an LM on the same token list, e.g. trained by ESPnet's asr.sh; not with --ctc_greedy)"
ngram_why="n-gram language models are not built here; ESPnet's asr_inference options go to \
decoding through --inference_args (\"--ngram_file F --ngram_weight W\"; not with --ctc_greedy)"
k2_why="k2 decoding is not supported; stage 13 decodes with ESPnet's asr_inference"
for n in use_lm use_word_lm; do refuse "${n}" false "${lm_why}"; done
for n in lm_tag lm_exp lm_stats_dir lm_config lm_args lm_train_text lm_dev_text lm_test_text \
         word_vocab_size num_splits_lm lm_fold_length inference_lm; do
    refuse "${n}" - "${lm_why}"
done
refuse use_ngram false "${ngram_why}"
for n in ngram_exp ngram_num inference_ngram; do refuse "${n}" - "${ngram_why}"; done
refuse use_k2 false "${k2_why}"
for n in k2_ctc_decoding use_nbest_rescoring num_paths nll_batch_size k2_config; do
    refuse "${n}" - "${k2_why}"
done
refuse asr_config - "named --train_config here (a YAML with model: allinone)"
refuse asr_task asr "only the asr task (model: allinone) is supported, no asr_transducer"
refuse feats_type raw "only raw waveforms (feats_type raw) are supported"
refuse audio_format - "stage 3 writes 16-bit wav; audio already at --fs, mono and unsegmented is used as it is"
refuse multi_columns_input_wav_scp false "wav.scp has one file or command per utterance/recording"
refuse multi_columns_output_wav_scp false "stage 3 writes one file per utterance"
refuse skip_stages - "use --stage/--stop_stage and the --skip_* options"
refuse skip_upload_hf - "stage 18 uploads to the Hugging Face Hub: --skip_upload false (--upload_dry_run false --hf_repo R)"
refuse eval_valid_set false "stage 13 decodes --test_sets only; add the validation set to --test_sets"
refuse post_process_local_data_opts - "local/data.sh runs once, in stage 1 (--local_data_opts)"
refuse auxiliary_data_tags - "auxiliary training data is not supported"
refuse bpe_train_text - "stage 5 makes the token list from the training set's text"
refuse bpe_input_sentence_size 100000000 "sentencepiece reads at most 100000000 sentences (fixed)"
refuse bpe_char_cover 1.0 "sentencepiece's character coverage is 1.0 (fixed)"
refuse bpe_nlsyms - "user-defined sentencepiece symbols are not supported"
refuse hugging_face_model_name_or_path - "--token_type is bpe or char"
refuse oov "<unk>" "the token list's symbols are fixed: <blank> <unk> ... <sos/eos>"
refuse blank "<blank>" "the token list's symbols are fixed: <blank> <unk> ... <sos/eos>"
refuse sos_eos "<sos/eos>" "the token list's symbols are fixed: <blank> <unk> ... <sos/eos>"
refuse nlsyms_txt none "non-linguistic symbols are not supported (texts are tokenised as written)"
refuse cleaner none "text cleaners are not supported (texts are tokenised as written)"
refuse hyp_cleaner none "text cleaners are not supported (texts are tokenised as written)"
refuse g2p none "g2p is not supported (--token_type is bpe or char)"
refuse pretrained_model - "pass ESPnet's --init_param through --asr_args (\"--init_param FILE\")"
refuse ignore_init_mismatch false "pass ESPnet's --ignore_init_mismatch true through --asr_args"
refuse num_splits_asr 1 "the training data is not split"
refuse num_ref 1 "one reference text per utterance"
refuse num_inf - "one hypothesis per utterance"
refuse sot_asr false "serialized output training is not supported"
refuse use_prompt false "prompts are not supported"
refuse use_lang_prompt false "prompts are not supported"
refuse use_nlp_prompt false "prompts are not supported"
refuse use_streaming false "streaming decoding is not supported"
refuse use_maskctc false "Mask-CTC decoding is not supported"
refuse batch_size 1 "decoding runs one utterance at a time"
refuse download_model - "stage 13 decodes the subsystems stage 12 extracts"
refuse score_opts - "stage 14 scores with sclite (WER, CER) and takes no options"
refuse local_score_opts - "stage 14 scores with sclite (WER, CER); there is no local/score.sh"
refuse asr_speech_fold_length 800 "fixed at asr.sh's defaults (800, i.e. 80000 samples)"
refuse asr_text_fold_length 150 "fixed at asr.sh's default (150)"
refuse debug false "there is no debug mode"

usage() {
    echo "Usage: $0 --train_config C [--option value ...]"
    echo "${help_message}"
    echo "Options (default in the second column):"
    printf '%s\n' "${option_help[@]}"
    echo "asr.sh options refused here (--NAME with no equivalent; each says why):"
    echo "$(printf -- "--%s " "${refused_names[@]}")" | fold -s -w 100 | sed 's/^/    /'
}

refused_index() {  # refused_index NAME: true when NAME was declared with `refuse`; sets refused_i
    for (( refused_i = 0; refused_i < ${#refused_names[@]}; refused_i++ )); do
        [ "${refused_names[${refused_i}]}" = "$1" ] && return 0
    done
    return 1
}

is_option() {  # is_option NAME: true when NAME was declared with `option`
    local n
    for n in "${option_names[@]}"; do [ "${n}" = "$1" ] && return 0; done
    return 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --*)
            name="${1#--}"; name="${name//-/_}"
            if refused_index "${name}"; then
                if [ $# -ge 2 ] && [ "$2" = "${refused_noop[${refused_i}]}" ]; then
                    shift 2; continue  # asr.sh's default: a no-op here
                fi
                fail "--${name}: ${refused_why[${refused_i}]}"
            fi
            is_option "${name}" || fail "unknown option $1; valid options:\n$(printf -- "--%s " "${option_names[@]}")"
            [ $# -ge 2 ] || fail "option $1 needs a value"
            printf -v "${name}" '%s' "$2"; shift 2 ;;
        *) fail "unexpected argument '$1' (options are --name value; --help lists them)" ;;
    esac
done

for flag in skip_data_prep skip_train skip_extract skip_eval skip_baselines skip_report \
            skip_packing skip_upload gpu_inference upload_dry_run; do
    case "${!flag}" in true|false) ;; *) fail "--${flag} must be true or false, got '${!flag}'" ;; esac
done
case "${train_threads}" in ''|*[!0-9]*|0) fail "--train_threads must be a whole number >= 1, got '${train_threads}'" ;; esac
case "${calibration_utts}" in ''|*[!0-9]*) fail "--calibration_utts must be a whole number >= 0 (0: keep the statistics training left), got '${calibration_utts}'" ;; esac
case "${token_type}" in bpe|char) ;; *) fail "--token_type must be bpe or char, got '${token_type}'" ;; esac
read -r -a sp_words <<< "${speed_perturb_factors}"
speed_perturb_factors="${sp_words[*]}"  # spaces normalised; only spaces: no stage 2
if [ -n "${speed_perturb_factors}" ]; then
    sp_error=$("${python}" -m espnet_allinone.bin.datadir speed_factors \
        --factors="${speed_perturb_factors}" 2>&1 > /dev/null) || fail "${sp_error#*error: }"
fi
[ -n "${train_config}" ] || fail "--train_config is required (a YAML with model: allinone)"
[ -f "${train_config}" ] || fail "--train_config ${train_config} does not exist"
if [ -n "${inference_config}" ] && [ ! -f "${inference_config}" ]; then
    fail "--inference_config ${inference_config} does not exist"
fi
command -v "${python}" > /dev/null || fail "--python ${python} not found"
"${python}" -c "import espnet_allinone" 2> /dev/null \
    || fail "${python} cannot import espnet_allinone: run 'pip install -e .' in the repository (or source path.sh)"

# sampling rate in Hz
case "${fs}" in *k) fs_hz=$(( ${fs%k} * 1000 )) ;; *) fs_hz="${fs}" ;; esac

if [ -z "${asr_tag}" ]; then
    asr_tag="$(basename "${train_config}" .yaml)"
    if [ -n "${speed_perturb_factors}" ]; then asr_tag+="_sp"; fi  # as asr.sh names it
fi
[ -n "${asr_exp}" ] || asr_exp="${expdir}/asr_${asr_tag}"
[ -n "${asr_stats_dir}" ] || asr_stats_dir="${asr_exp}/stats"
data_feats="${dumpdir}/raw"
token_listdir="data/${lang}_token_list"
if [ "${token_type}" = bpe ]; then
    bpedir="${token_listdir}/bpe_${bpemode}${nbpe}"
    bpemodel="${bpedir}/bpe.model"
    token_list="${bpedir}/tokens.txt"
else
    bpemodel=none
    token_list="${token_listdir}/char/tokens.txt"
fi
logdir="${asr_exp}/logs"
[ -f ./cmd.sh ] && . ./cmd.sh
train_cmd="${train_cmd:-utils/run_local.sh}"
cuda_cmd="${cuda_cmd:-utils/run_local.sh}"
decode_cmd="${decode_cmd:-utils/run_local.sh}"

recipe_util() { "${python}" -m espnet_allinone.bin.recipe_util "$@"; }

# --subsystems is checked ONCE, here, against the training config's search space
# (before any stage runs); every stage uses the resolved, canonical list.
subsystem_list=$(recipe_util subsystems --config "${train_config}" --subsystems "${subsystems}") \
    || fail "--subsystems '${subsystems}' does not fit ${train_config} (see above)"
subsystem_list=$(echo ${subsystem_list})

# A non-empty experiment dir made with another configuration is refused. The
# training set is the one stages 3-18 use (<train_set>_sp with speed perturbation).
sp_guard=()
if [ -n "${speed_perturb_factors}" ]; then
    sp_guard=(--option "speed_perturb_factors=${speed_perturb_factors}")
fi
recipe_util guard --asr_exp "${asr_exp}" --config "${train_config}" \
    --option "token_type=${token_type}" --option "nbpe=${nbpe}" --option "bpemode=${bpemode}" \
    --option "fs=${fs_hz}" --option "feats_normalize=${feats_normalize}" \
    --option "train_set=${train_set}${speed_perturb_factors:+_sp}" --option "valid_set=${valid_set}" \
    "${sp_guard[@]}" || fail "refusing to use ${asr_exp} (see above)"

current_stage=0
# require FILE STAGE: fail naming the missing input and the stage that makes it.
require() {
    local file="$1" maker="$2"
    if [ ! -e "${file}" ]; then
        echo "ERROR: stage ${current_stage} needs ${file}, which stage ${maker} makes;" \
             "run stage ${maker} first (--stage ${maker})" >&2
        return 1
    fi
}

run_stage() {  # run_stage N NAME SKIP FUNCTION
    local n="$1" name="$2" skip="$3" fn="$4"
    if [ "${stage}" -gt "${n}" ] || [ "${stop_stage}" -lt "${n}" ]; then return 0; fi
    if [ "${skip}" = true ]; then log "Stage ${n}: ${name}: skipped"; return 0; fi
    mkdir -p "${logdir}"
    local logf="${logdir}/stage${n}_${name}.log" t0=${SECONDS} rc
    log "Stage ${n}: ${name} (log: ${logf})"
    current_stage="${n}"
    set +e
    ( set -euo pipefail; "${fn}" ) 2>&1 | tee "${logf}"
    rc=${PIPESTATUS[0]}
    set -e
    [ "${rc}" -eq 0 ] || fail "stage ${n} (${name}) failed with exit code ${rc}; see ${logf}"
    log "Stage ${n}: ${name}: done in $(( SECONDS - t0 )) s"
}

# ---- stages -----------------------------------------------------------------
stage_data() {
    [ -x local/data.sh ] || { echo "ERROR: local/data.sh missing or not executable" >&2; return 1; }
    # shellcheck disable=SC2086
    local/data.sh ${local_data_opts}
    for dset in "${train_set}" "${valid_set}" ${test_sets}; do
        "${python}" -m espnet_allinone.bin.datadir validate "data/${dset}"
    done
}

# stage_speed_perturb: data/<train_set> -> data/<train_set>_sp, one copy per factor
# (audio under <dumpdir>/speed_perturb/<train_set>_sp/sp<f>/).
stage_speed_perturb() {
    require "data/${train_set}/wav.scp" 1
    "${python}" -m espnet_allinone.bin.datadir speed_perturb "data/${train_set}" \
        "data/${train_set}_sp" --factors="${speed_perturb_factors}" \
        --audio_dir "${dumpdir}/speed_perturb/${train_set}_sp" --nj "${nj}"
}

stage_format() {
    local maker
    for dset in "${train_set}" "${valid_set}"; do
        maker=1
        if [ -n "${speed_perturb_factors}" ] && [ "${dset}" = "${train_set}" ]; then maker=2; fi
        require "data/${dset}/wav.scp" "${maker}"
        "${python}" -m espnet_allinone.bin.datadir format "data/${dset}" \
            "${data_feats}/org/${dset}" --fs "${fs_hz}" --nj "${nj}"
    done
    for dset in ${test_sets}; do
        require "data/${dset}/wav.scp" 1
        "${python}" -m espnet_allinone.bin.datadir format "data/${dset}" "${data_feats}/${dset}" \
            --fs "${fs_hz}" --nj "${nj}"
    done
}

stage_filter() {
    for dset in "${train_set}" "${valid_set}"; do
        require "${data_feats}/org/${dset}/utt2num_samples" 3
        "${python}" -m espnet_allinone.bin.datadir filter "${data_feats}/org/${dset}" \
            "${data_feats}/${dset}" --fs "${fs_hz}" --min "${min_wav_duration}" \
            --max "${max_wav_duration}"
    done
}

stage_token_list() {
    require "${data_feats}/${train_set}/text" 4
    local srctexts="${data_feats}/srctexts"
    cut -f 2- -d " " "${data_feats}/${train_set}/text" > "${srctexts}"
    local opts=()
    if [ "${token_type}" = bpe ]; then
        mkdir -p "${bpedir}"
        recipe_util spm_train --input "${srctexts}" --vocab_size "${nbpe}" \
            --model_type "${bpemode}" --model_prefix "${bpedir}/bpe"
        opts=(--bpemodel "${bpemodel}")
    fi
    mkdir -p "$(dirname "${token_list}")"
    "${python}" -m espnet2.bin.tokenize_text --token_type "${token_type}" "${opts[@]}" \
        --input "${srctexts}" --output "${token_list}" --field 1- --cleaner none \
        --non_linguistic_symbols none --write_vocabulary true \
        --add_symbol "<blank>:0" --add_symbol "<unk>:1" --add_symbol "<sos/eos>:-1"
    echo "token list: ${token_list} ($(wc -l < "${token_list}") tokens)"
}

common_train_opts() {  # the data and token options every asr_train call shares
    echo --use_preprocessor true --token_type "${token_type}" --token_list "${token_list}" \
        --bpemodel "${bpemodel}" --non_linguistic_symbols none --cleaner none --g2p none \
        --frontend_conf "fs=${fs}"
    if ! "${python}" -c "import tensorboard" 2> /dev/null; then echo --use_tensorboard false; fi
}

stage_stats() {
    require "${data_feats}/${train_set}/wav.scp" 4
    require "${data_feats}/${valid_set}/wav.scp" 4
    require "${token_list}" 5
    local _logdir="${asr_stats_dir}/logdir" n_valid _nj i
    mkdir -p "${_logdir}"
    n_valid=$(wc -l < "${data_feats}/${valid_set}/wav.scp")
    _nj=$(( nj < n_valid ? nj : n_valid ))
    local tr_parts=() va_parts=() inputs=()
    for (( i = 1; i <= _nj; i++ )); do
        tr_parts+=("${_logdir}/train.${i}.scp"); va_parts+=("${_logdir}/valid.${i}.scp")
        inputs+=(--input_dir "${_logdir}/stats.${i}")
    done
    "${python}" -m espnet_allinone.bin.datadir split "${data_feats}/${train_set}/wav.scp" "${tr_parts[@]}"
    "${python}" -m espnet_allinone.bin.datadir split "${data_feats}/${valid_set}/wav.scp" "${va_parts[@]}"
    # shellcheck disable=SC2046,SC2086
    ${train_cmd} JOB=1:"${_nj}" "${_logdir}/stats.JOB.log" \
        "${python}" -m espnet_allinone.bin.asr_train --collect_stats true --ngpu 0 --normalize none \
        --config "${train_config}" $(common_train_opts) \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --train_shape_file "${_logdir}/train.JOB.scp" --valid_shape_file "${_logdir}/valid.JOB.scp" \
        --output_dir "${_logdir}/stats.JOB" ${asr_args} \
        || { echo "ERROR: statistics collection failed; see ${_logdir}/stats.*.log" >&2; return 1; }
    "${python}" -m espnet2.bin.aggregate_stats_dirs "${inputs[@]}" --output_dir "${asr_stats_dir}"
    local v; v=$(wc -l < "${token_list}")
    for d in train valid; do
        awk -v N="${v}" '{ print $0 "," N }' "${asr_stats_dir}/${d}/text_shape" \
            > "${asr_stats_dir}/${d}/text_shape.${token_type}"
    done
    echo "statistics: ${asr_stats_dir}/train/feats_stats.npz"
}

# train_model OUTPUT_DIR CONFIG: ESPnet's launcher, so --ngpu/--num_nodes work as in asr.sh.
train_model() {
    local out="$1" config="$2" norm_opts=() t0=${SECONDS}
    require "${asr_stats_dir}/train/feats_stats.npz" 10
    require "${asr_stats_dir}/train/text_shape.${token_type}" 10
    if [ "${feats_normalize}" = global_mvn ]; then
        norm_opts=(--normalize global_mvn --normalize_conf "stats_file=${asr_stats_dir}/train/feats_stats.npz")
    fi
    mkdir -p "${out}"
    # shellcheck disable=SC2046,SC2086
    OMP_NUM_THREADS="${train_threads}" \
    "${python}" -m espnet2.bin.launch --cmd "${cuda_cmd} --name train_$(basename "${out}")" \
        --log "${out}/train.log" --ngpu "${ngpu}" --num_nodes "${num_nodes}" \
        --init_file_prefix "${out}/.dist_init_" --multiprocessing_distributed true -- \
        "${python}" -m espnet_allinone.bin.asr_train \
        --config "${config}" $(common_train_opts) "${norm_opts[@]}" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/wav.scp,speech,sound" \
        --train_data_path_and_name_and_type "${data_feats}/${train_set}/text,text,text" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/wav.scp,speech,sound" \
        --valid_data_path_and_name_and_type "${data_feats}/${valid_set}/text,text,text" \
        --train_shape_file "${asr_stats_dir}/train/speech_shape" \
        --train_shape_file "${asr_stats_dir}/train/text_shape.${token_type}" \
        --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/text_shape.${token_type}" \
        --fold_length 80000 --fold_length 150 --resume true --output_dir "${out}" ${asr_args} \
        || { echo "ERROR: training failed; see ${out}/train.log" >&2; tail -n 30 "${out}/train.log" >&2; return 1; }
    echo $(( SECONDS - t0 )) > "${out}/train_seconds"
    echo "trained ${out} in $(cat "${out}/train_seconds") s"
}

stage_train() { train_model "${asr_exp}" "${train_config}"; }

# pick_model DIR: the checkpoint to extract from.
pick_model() {
    local dir="$1" m
    if [ "${inference_asr_model}" != auto ]; then
        require "${dir}/${inference_asr_model}" 11 && echo "${dir}/${inference_asr_model}"; return
    fi
    for m in valid.loss.ave.pth valid.acc.ave.pth valid.loss.best.pth valid.acc.best.pth; do
        if [ -e "${dir}/${m}" ]; then echo "${dir}/${m}"; return; fi
    done
    require "${dir}/valid.loss.ave.pth" 11
}

# extract_from TRAIN_DIR OUTDIR SUBSYSTEMS: SUBSYSTEMS is (part of) the list resolved at the start.
extract_from() {
    local train_dir="$1" outdir="$2" subs="$3" model calibration=()
    require "${train_dir}/config.yaml" 11
    model=$(pick_model "${train_dir}")
    if [ "${calibration_utts}" -gt 0 ]; then
        require "${data_feats}/${train_set}/wav.scp" 3
        calibration=(--calibration_data "${data_feats}/${train_set}"
                     --calibration_utts "${calibration_utts}")
    fi
    echo "extracting from ${model}: ${subs}"
    # shellcheck disable=SC2086
    "${python}" -m espnet_allinone.bin.extract --asr_train_config "${train_dir}/config.yaml" \
        --asr_model_file "${model}" --subsystems ${subs} \
        --outdir "${outdir}" --overwrite "${calibration[@]}" ${extract_args}
}

stage_extract() { extract_from "${asr_exp}" "${asr_exp}/extracted" "${subsystem_list}"; }

# decode_models DSET OUT_ROOT MODEL_DIR...: --inference_nj parallel jobs, each
# decoding its share of DSET with every model in one process (ESPnet's import
# costs ~19 s a process); results in OUT_ROOT/<model dir name>/DSET/text.
decode_models() {
    local dset="$1" out_root="$2" n _nj i m name parts=()
    shift 2
    for m in "$@"; do require "${m}/config.yaml" 12; done
    require "${data_feats}/${dset}/wav.scp" 3
    local _logdir="${out_root}/logdir/${dset}"
    rm -rf "${_logdir}"; mkdir -p "${_logdir}"
    n=$(wc -l < "${data_feats}/${dset}/wav.scp")
    _nj=$(( inference_nj < n ? inference_nj : n ))
    for (( i = 1; i <= _nj; i++ )); do parts+=("${_logdir}/keys.${i}.scp"); done
    "${python}" -m espnet_allinone.bin.datadir split "${data_feats}/${dset}/wav.scp" "${parts[@]}"
    local opts=() _ngpu=0
    [ -n "${inference_config}" ] && opts+=(--config "${inference_config}")
    "${gpu_inference}" && _ngpu=1
    # shellcheck disable=SC2086
    ${decode_cmd} JOB=1:"${_nj}" "${_logdir}/asr_inference.JOB.log" \
        "${python}" -m espnet_allinone.bin.asr_inference_multi --batch_size 1 --ngpu "${_ngpu}" \
        --data_path_and_name_and_type "${data_feats}/${dset}/wav.scp,speech,sound" \
        --key_file "${_logdir}/keys.JOB.scp" --model_dirs "$@" \
        --output_dir "${_logdir}/output.JOB" "${opts[@]}" ${inference_args} \
        || { echo "ERROR: decoding failed; see ${_logdir}/asr_inference.*.log" >&2; return 1; }
    for m in "$@"; do
        name=$(basename "${m}")
        mkdir -p "${out_root}/${name}/${dset}"
        for (( i = 1; i <= _nj; i++ )); do cat "${_logdir}/output.${i}/${name}/1best_recog/text"; done \
            | sort > "${out_root}/${name}/${dset}/text"
        [ "$(wc -l < "${out_root}/${name}/${dset}/text")" -eq "${n}" ] || {
            echo "ERROR: ${out_root}/${name}/${dset}/text has" \
                 "$(wc -l < "${out_root}/${name}/${dset}/text") of ${n} utterances" >&2
            return 1
        }
    done
    echo "decoded ${n} utterances of ${dset} with $# model(s) under ${out_root}"
}

stage_decode() {
    local dirs=() sub dset
    for sub in ${subsystem_list}; do dirs+=("${asr_exp}/extracted/${sub}"); done
    for dset in ${test_sets}; do
        decode_models "${dset}" "${asr_exp}/${inference_tag}" "${dirs[@]}"
    done
}

stage_score() {
    for sub in ${subsystem_list}; do
        for dset in ${test_sets}; do
            local dir="${asr_exp}/${inference_tag}/${sub}/${dset}"
            require "${dir}/text" 13
            "${python}" -m espnet_allinone.bin.score --ref_dir "${data_feats}/${dset}" \
                --hyp_text "${dir}/text" --outdir "${dir}"
        done
    done
}

baseline_one() {
    local d="$1" sub="$2" first_test="$3"
    recipe_util baseline_config --config "${train_config}" --subsystem "${sub}" \
        --out "${d}/train_alone.yaml" || return 1
    if [ ! -f "${d}/train_seconds" ]; then
        train_model "${d}" "${d}/train_alone.yaml" || return 1
    fi
    extract_from "${d}" "${d}/extracted" "${sub}" || return 1
    decode_models "${first_test}" "${d}/${inference_tag}" "${d}/extracted/${sub}" || return 1
    "${python}" -m espnet_allinone.bin.score --ref_dir "${data_feats}/${first_test}" \
        --hyp_text "${d}/${inference_tag}/${sub}/${first_test}/text" \
        --outdir "${d}/${inference_tag}/${sub}/${first_test}"
}

stage_baselines() {
    local first_test; first_test=$(echo ${test_sets} | cut -d " " -f 1)
    local bdir="${asr_exp}/baselines" sub
    mkdir -p "${bdir}"
    for sub in ${subsystem_list}; do
        # A failed baseline is reported as missing (baselines.json), not fatal.
        baseline_one "${bdir}/${sub}" "${sub}" "${first_test}" \
            || echo "WARNING: baseline ${sub} failed; the report shows it as missing" >&2
    done
    # shellcheck disable=SC2086
    recipe_util baselines_summary --baselines_dir "${bdir}" --inference_tag "${inference_tag}" \
        --test_set "${first_test}" --out "${asr_exp}/baselines.json" --subsystems ${subsystem_list}
}

stage_report() {
    local first_test dset others=()
    first_test=$(echo ${test_sets} | cut -d " " -f 1)
    for dset in ${test_sets}; do
        for sub in ${subsystem_list}; do
            require "${asr_exp}/${inference_tag}/${sub}/${dset}/scores.json" 14
        done
        [ "${dset}" != "${first_test}" ] && others+=("${dset}")
    done
    local opts=()
    [ -n "${inference_config}" ] && opts+=(--inference_config "${inference_config}")
    [ -f "${asr_exp}/baselines.json" ] && opts+=(--baselines "${asr_exp}/baselines.json")
    [ -f "${asr_exp}/train_seconds" ] && opts+=(--allinone_train_seconds "$(cat "${asr_exp}/train_seconds")")
    [ -n "${report_title}" ] && opts+=(--title "${report_title}")
    "${python}" -m espnet_allinone.bin.report --asr_exp "${asr_exp}" \
        --decode_dir "${asr_exp}/${inference_tag}" --extracted_dir "${asr_exp}/extracted" \
        --test_set "${first_test}" --other_test_sets "${others[@]}" \
        --subsystems "${subsystem_list}" \
        --data_dir "${data_feats}/${first_test}" --rtf_utts "${rtf_utts}" "${opts[@]}"
}

stage_pack() {
    for sub in ${subsystem_list}; do require "${asr_exp}/extracted/${sub}/config.yaml" 12; done
    local opts=()
    # model cards carry the WER when the report stage has run
    [ -f "${asr_exp}/results.json" ] && opts+=(--results "${asr_exp}/results.json")
    # shellcheck disable=SC2086
    "${python}" -m espnet_allinone.bin.pack --extracted_dir "${asr_exp}/extracted" \
        --outdir "${asr_exp}/packed" --subsystems ${subsystem_list} "${opts[@]}" ${pack_args}
}

stage_upload() {
    local zips=() sub opts=()
    for sub in ${subsystem_list}; do
        require "${asr_exp}/packed/${sub}.zip" 17
        zips+=("${asr_exp}/packed/${sub}.zip")
    done
    if [ "${upload_dry_run}" = true ]; then
        opts+=(--dry_run)
    elif [ -z "${hf_repo}" ]; then
        echo "ERROR: --hf_repo (e.g. user/allinone-{subsystem}) is required to upload;" \
             "or keep --upload_dry_run true" >&2
        return 1
    fi
    "${python}" -m espnet_allinone.bin.upload --packed "${zips[@]}" \
        --repo_id "${hf_repo:-your-name/allinone-{subsystem}}" --workdir "${asr_exp}/upload" \
        "${opts[@]}"
}

log "${command_line}"
log "experiment: ${asr_exp}; subsystems: ${subsystem_list}"
skip_prep="${skip_data_prep}"
run_stage 1 data_prep "${skip_prep}" stage_data
if [ -n "${speed_perturb_factors}" ]; then
    run_stage 2 speed_perturb "${skip_prep}" stage_speed_perturb
    train_set="${train_set}_sp"  # as asr.sh: every later stage uses the perturbed set
fi
run_stage 3 format "${skip_prep}" stage_format
run_stage 4 filter "${skip_prep}" stage_filter
run_stage 5 token_list "${skip_prep}" stage_token_list
run_stage 10 stats "${skip_train}" stage_stats
run_stage 11 train "${skip_train}" stage_train
run_stage 12 extract "${skip_extract}" stage_extract
run_stage 13 decode "${skip_eval}" stage_decode
run_stage 14 score "${skip_eval}" stage_score
run_stage 15 baselines "${skip_baselines}" stage_baselines
run_stage 16 report "${skip_report}" stage_report
run_stage 17 pack "${skip_packing}" stage_pack
run_stage 18 upload "${skip_upload}" stage_upload

if [ -f "${asr_exp}/RESULTS.md" ] && [ "${stage}" -le 16 ] && [ "${stop_stage}" -ge 16 ] \
        && [ "${skip_report}" = false ]; then
    echo; cat "${asr_exp}/RESULTS.md"
fi
log "Successfully finished. [elapsed=${SECONDS}s]"
