"""`rlxf ingest`: checks a file, prints every warning and rejected row, lands it without replacing a
different waiting file, in the data home RLXF_HOME / RLXF_PROFILE name (as the Dagster assets do)."""

import zipfile

import pytest

from ml.cli import main
from ml.data.ingest import file_sha256, ingest_landing
from ml.paths import DataHome

ROWS = ("Country Name,Economic Code,Description,PC Status,TestDate\n"
        "Ghana,20.2,Adopt a revenue law,M,03/31/2015\n"
        ",20.2,A condition without a country,NM,03/31/2015\n"
        "Ghana,20.6,Audit the treasury,NM,02/30/2015\n")


@pytest.fixture()
def export(tmp_path):
    path = tmp_path / "incoming" / "reviews.csv"
    path.parent.mkdir()
    path.write_text(ROWS, encoding="utf-8")
    return path


def test_honours_rlxf_home_and_profile(tmp_path, export, monkeypatch, capsys):
    # Regression: with both set, the CLI used .rlxf/demo.
    monkeypatch.setenv("RLXF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RLXF_PROFILE", "smoke")
    assert main(["ingest", str(export)]) == 0
    assert (tmp_path / "home" / "landing" / "reviews.csv").read_bytes() == export.read_bytes()
    main(["summary"])
    assert f"profile smoke: data home {tmp_path / 'home'}" in capsys.readouterr().out
    # --home still wins over the environment.
    assert main(["ingest", "--home", str(tmp_path / "other"), str(export)]) == 0
    assert (tmp_path / "other" / "landing" / "reviews.csv").exists()


def test_prints_every_reader_warning_and_rejected_row(tmp_path, export, capsys):
    assert main(["ingest", "--home", str(tmp_path / "home"), str(export)]) == 0
    err = capsys.readouterr().err.splitlines()
    # Regression: the malformed date was reported in Dagster's log only.
    assert any(line.startswith("warning: reviews.csv:") and "row 4: '02/30/2015'" in line for line in err)
    assert any(line.startswith("rejected: reviews.csv row 3 column country:") for line in err)


def test_never_replaces_a_different_waiting_file(tmp_path, export, capsys):
    home = tmp_path / "home"
    assert main(["ingest", "--home", str(home), str(export)]) == 0
    first = export.read_bytes()
    export.write_text(ROWS + "Kenya,20.2,Adopt a budget,M,06/30/2016\n", encoding="utf-8")
    capsys.readouterr()
    # Regression: the second `rlxf ingest reviews.csv` replaced the first file waiting in the landing folder.
    assert main(["ingest", "--home", str(home), str(export)]) == 0
    out = capsys.readouterr().out
    renamed = f"reviews.{file_sha256(export)[:12]}.csv"
    assert f"lands as {renamed}" in out
    landing = home / "landing"
    assert (landing / "reviews.csv").read_bytes() == first
    assert (landing / renamed).read_bytes() == export.read_bytes()
    # The same bytes again: nothing new is landed.
    capsys.readouterr()
    assert main(["ingest", "--home", str(home), str(export)]) == 0
    assert f"already waiting in {landing} as {renamed}" in capsys.readouterr().out
    assert {p.name for p in landing.iterdir()} == {"reviews.csv", renamed}


def test_a_file_already_in_the_warehouse_is_not_landed_again(tmp_path, export, capsys):
    home = DataHome(tmp_path / "home").ensure()
    assert main(["ingest", "--home", str(home.root), str(export)]) == 0
    ingest_landing(home.landing, home.warehouse, home.quarantine, progress=lambda _: None)
    (home.landing / "reviews.csv").unlink()
    capsys.readouterr()
    assert main(["ingest", "--home", str(home.root), str(export)]) == 0
    assert "already loaded" in capsys.readouterr().out
    assert list(home.landing.iterdir()) == []


def test_a_corrupt_workbook_is_an_error_without_traceback(tmp_path, capsys):
    path = tmp_path / "MONA.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook")
    assert main(["ingest", "--home", str(tmp_path / "home"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MONA.xlsx: not a valid Excel workbook") and "Traceback" not in err
    assert not (tmp_path / "home" / "landing" / "MONA.xlsx").exists()


def test_an_unknown_profile_in_the_environment_is_named(monkeypatch, capsys):
    monkeypatch.setenv("RLXF_PROFILE", "papr")
    with pytest.raises(SystemExit, match="unknown profile 'papr'"):
        main(["summary"])


def test_recommend_puts_new_proposals_before_copies_and_refuses_an_unknown_area():
    import numpy as np
    import pandas as pd

    from ml.recommend import InputError, analyst_order, known_area, past_years

    # The best-rewarded proposal copies a training condition: it goes after the new ones, which keep
    # their order by reward.
    reward, copies = np.array([0.9, 0.5, 0.7, 0.8]), np.array([True, False, False, True])
    assert analyst_order(reward, [copies]).tolist() == [2, 1, 0, 3]
    # Among the new ones, one naming a past year goes after the undated one, whatever its reward.
    dated = np.array([False, False, True, False])
    assert analyst_order(reward, [copies, dated]).tolist() == [1, 2, 0, 3]
    # An off-topic proposal goes after every on-topic one, copies included; one cut off at the token
    # limit after all the others.
    off_topic, cut_off = np.array([False, True, False, False]), np.array([False, False, True, False])
    assert analyst_order(reward, [cut_off, off_topic, copies, dated]).tolist() == [0, 3, 1, 2]
    assert past_years("Submit a draft law on the fiscal framework for 2002, by end-June 2027", 2026) == [2002]
    assert past_years("Adopt the 2026 budget in line with 1999 rules and the 1,998 posts", 2026) == [1999]
    corpus = pd.DataFrame({"economic_area": ["1.2. Revenue administration, including customs",
                                             "1.8. Budget preparation"]})
    assert known_area(corpus, "revenue administration,  including customs") == corpus["economic_area"][0]
    with pytest.raises(InputError, match=r"'Budget preparations' does not occur.*closest: '1.8. Budget preparation'"):
        known_area(corpus, "Budget preparations")
    with pytest.raises(InputError, match="'Space programme' does not occur"):
        known_area(corpus, "Space programme")


def test_recommend_offers_different_proposals_and_actions_before_rewordings_and_ranks_stutters_lower():
    import pandas as pd

    from ml.recommend import AreaRecord, Proposal, different_first, repeats_itself

    area = "Revenue administration, including customs"
    corpus = pd.DataFrame({
        "economic_area": [area] * 5 + ["Debt management"],
        "country": ["Ghana"] * 6, "test_year": [2020] * 6, "is_met": [1, 0, 1, 1, 0, 1],
        "description": ["Adopt a decree on the customs clearance process", "Establish a large taxpayer unit",
                        "Submit to Parliament amendments to the VAT law", "Publish a report on customs valuation",
                        "Strengthen the revenue authority", "Publish the debt strategy"]})
    record = AreaRecord(corpus, area)
    ranked = ["Finalize a strategy for the customs clearance process",
              "Finalize on a strategy for the customs clearance process, with Fund staff",  # rewords the first
              "Submit to Parliament amendments to the VAT law on imports",
              "Submit to Parliament amendments to the VAT law, with the customs code"]  # rewords the third
    assert record.variants(ranked) == [None, 0, None, 2]
    # n different proposals first: a rewording goes after the other proposals that carry no worse flag,
    # marked with the number of the one it rewords.
    shown = different_first([Proposal(text, 0.8, 0.8, 0.9, None) for text in ranked], record)
    assert [p.text for p in shown] == [ranked[0], ranked[2], ranked[1], ranked[3]]
    assert [p.rewords for p in shown] == [None, None, 1, 2]
    # A flagged proposal (a past year) still goes after an unflagged rewording.
    dated = "Establish a large taxpayer unit by end-June 2002"
    proposals = [Proposal(text, 0.8, 0.8, 0.9, None) for text in ranked[:3]] + [
        Proposal(dated, 0.8, 0.8, 0.9, None, past_years=[2002])]
    assert [p.text for p in different_first(proposals, record)] == [ranked[0], ranked[2], ranked[1], dated]
    # Different actions before a second proposal of the same action (a proposal of its own, not a rewording);
    # but a flag still weighs more than a repeated action.
    second_submit = "Submit to Cabinet a strategy for the large taxpayer unit"
    proposals = [Proposal(text, 0.8, 0.8, 0.9, None) for text in [ranked[2], second_submit, ranked[0]]]
    assert record.variants([p.text for p in proposals]) == [None, None, None]
    assert [p.text for p in different_first(proposals, record)] == [ranked[2], ranked[0], second_submit]
    proposals[2].past_years = [2002]
    assert [p.text for p in different_first(proposals, record)] == [ranked[2], second_submit, ranked[0]]
    # The precedents are the area's own conditions, never another area's.
    assert all("debt" not in line for lines in record.precedents("Ghana", ranked) for line in lines)

    assert repeats_itself("Finalize the framework for revenue measures in line with staff staff recommendations.")
    assert repeats_itself("Complete a review of banking supervision, in line with staff recommendations in line "
                          "with staff")
    # Real conditions name an institution twice without repeating themselves.
    assert not repeats_itself("Prepare and submit to Fund staff a roadmap for the state telecommunications "
                              "operator, in consultation with Fund staff.")
    assert not repeats_itself("Publish on the Ministry of Finance website a report on the accounts of the Treasury")


def test_recommend_flags_a_proposal_that_opens_with_another_form_of_the_records_verb():
    from ml.recommend import Proposal, analyst_flags, analyst_order, record_opening

    openings = {"submit", "prepare", "issue", "adopt", "parliament", "process"}
    assert record_opening("Submits to Parliament a draft law on the state savings bank", openings) == "submit"
    assert record_opening("Submitting to parliament a draft law on the poverty strategy", openings) == "submit"
    assert record_opening("Submitted to Fund staff a report", openings) == "submit"
    assert record_opening("Preparing a roadmap for electricity tariffs", openings) == "prepare"
    assert record_opening("Prepared a roadmap for electricity tariffs", openings) == "prepare"
    assert record_opening("Issues regulations on the excise regime", openings) == "issue"
    # Opens as the record does, or with a word that is no form of the record's verbs.
    for text in ["Submit to Parliament a draft law", "Parliament adopts the budget", "Process the arrears",
                 "Develops a strategy", "Focus the budget", ""]:
        assert record_opening(text, openings) is None, text
    # Flagged, it comes after a proposal that opens as the record does, whatever its reward.
    proposals = [Proposal("Submits to Parliament a draft law", 0.9, 0.8, 0.9, None, record_opening="submit"),
                 Proposal("Submit to Parliament a draft law", 0.7, 0.8, 0.9, None)]
    assert analyst_order([0.9, 0.7], analyst_flags(proposals)).tolist() == [1, 0]


def test_recommend_flags_a_proposal_that_restates_the_countrys_condition_or_names_another_country():
    import pandas as pd

    from ml.recommend import AreaRecord, Proposal, different_first, other_countries

    area = "Revenue administration, including customs"
    corpus = pd.DataFrame({
        "economic_area": [area] * 3, "country": ["Ghana", "Ghana", "Kenya"], "test_year": [2023, 2022, 2021],
        "is_met": [1, 0, 1],
        "description": ["Submit to the Council of Ministers draft amendments to the legal framework for customs "
                        "valuation controls", "Establish a dedicated unit for compliance management",
                        "Adopt a decree on the customs clearance process"]})
    record = AreaRecord(corpus, area)
    texts = [
        # Ghana's 2023 condition with a clause added: it restates it.
        "Submit to the Council of Ministers draft amendments to the legal framework for customs valuation "
        "controls, outline measures for the customs clearance process.",
        # A next step on the object of the same condition: a proposal of its own.
        "Implement the amended legal framework for customs valuation controls, with Fund staff",
        # Kenya's condition word for word: another country's, so not a restatement of Ghana's record.
        "Adopt a decree on the customs clearance process"]
    assert record.restated("Ghana", texts) == [
        "Ghana 2023 (met): Submit to the Council of Ministers draft amendments to the legal framework for "
        "customs valuation controls", None, None]
    assert record.restated("Kenya", texts)[2] == "Kenya 2021 (met): Adopt a decree on the customs clearance process"

    countries = ["Guinea", "Guinea-Bissau", "Central African Republic", "Ghana"]
    assert other_countries(["Define a strategy in the framework of the Central African Republic",
                            "Publish the Ghana Revenue Authority's annual report"], countries,
                           "Ghana") == [["Central African Republic"], []]
    assert other_countries(["Adopt the customs code of Guinea-Bissau, as Ghana did"], countries,
                           "guinea-bissau") == [["Ghana"]]  # the asked country in any case; not read as Guinea
    assert other_countries(["Adopt the customs code of Ghana"], countries, None) == [[]]  # no country was asked

    # Both flags rank a proposal after the new ones, whatever its reward: the restatement after every
    # proposal that names another country, which goes after the clean one.
    best = Proposal(texts[0], 0.9, 0.9, 0.9, None, restates=record.restated("Ghana", texts)[0])
    foreign = Proposal("Define a strategy for the customs of the Central African Republic", 0.8, 0.8, 0.9, None,
                       other_countries=["Central African Republic"])
    clean = Proposal(texts[1], 0.7, 0.7, 0.9, None)
    assert [p.text for p in different_first([best, foreign, clean], record)] == [clean.text, foreign.text, best.text]


def test_recommend_flags_a_proposal_naming_a_body_no_condition_of_the_record_names():
    import pandas as pd

    from ml.recommend import AreaRecord, Proposal, different_first, unknown_names

    record = ["Submit to the Council of Ministers the draft budget law", "Ministry of Finance to publish the arrears",
              "Adopt the VAT law, in consultation with Fund staff"]
    texts = ["Submit to the Ministry of Business Development and Finance a draft framework",  # invented
             "Submit a memorandum to the Labour Party and to the Council of Ministers",  # one of two is unknown
             "Publish on the Ministry of Finance website the VAT refunds, with Fund staff",  # all known, any case
             "Regularize a reporting framework for municipalities"]  # the opening word is not a name
    assert unknown_names(texts, record) == [["Ministry of Business Development and Finance"], ["Labour Party"], [], []]
    assert unknown_names(["Publish the FUNDS report"], record) == [["FUNDS"]]  # whole words: "Fund" is not "FUNDS"
    # Month names are no bodies; a record's "end-May" holds "May" ("May Council" still is unknown).
    assert unknown_names(["Adopt the VAT law by August 2027", "Adopt the budget by May 2027 with the May Council"],
                         record) == [[], ["May Council"]]
    assert unknown_names(["Submit the arrears report to the Treasury Board"],
                         [*record, "Clear the arrears by end-Treasury Board"]) == [[]]
    # A hyphen after is no boundary ("Board-level"); a later whole-word occurrence still counts.
    assert unknown_names(["Report to the Board"], ["Boards meet", "a Board-level review"]) == [["Board"]]
    assert unknown_names(["Report to the Board"], ["Boards meet", "a Board-level review", "the Board"]) == [[]]
    # A proposal naming an unknown body goes after a clean one, whatever its reward.
    area = "Revenue administration, including customs"
    corpus = pd.DataFrame({"economic_area": [area] * 3, "country": ["Ghana"] * 3, "test_year": [2020] * 3,
                           "is_met": [1, 0, 1], "description": record})
    invented = Proposal(texts[0], 0.9, 0.9, 0.9, None, unknown_names=unknown_names(texts[:1], record)[0])
    clean = Proposal(texts[2], 0.6, 0.6, 0.9, None)
    assert [p.text for p in different_first([invented, clean], AreaRecord(corpus, area))] == [clean.text, invented.text]


def test_recommend_flags_a_proposal_that_borrows_the_questions_words_and_ranks_it_after_a_clean_one():
    import re

    import pandas as pd

    from ml.policy.prompts import prompt_words, render_prompt
    from ml.recommend import AreaRecord, Proposal, different_first
    from ml.similarity import PromptEchoes

    question = render_prompt("Chad", "ECF", "Budget preparation")
    assert {"condition", "proposal", "appropriate", "arrangement", "under"} <= prompt_words()
    assert set(re.findall(r"[a-z]+", question.casefold())) - {"chad", "ecf", "budget", "preparation"} <= prompt_words()
    record = ["Adopt the budget law under the new framework", "Submit the budget to the Council of Ministers",
              "Publish the budget execution report", "Clear the arrears of the Treasury"]
    echoes = PromptEchoes(prompt_words(), record)
    # "under" is a word of the record (one condition in four), "the" and "of" too; "met" and "not" are too short.
    texts = ["Finalize draft conditions for the medium-term budget framework",
             "Submit a draft policy proposal under the ECF arrangement for achieving budget targets",
             "Adopt the budget law under the new framework", "Ensure the targets are met, not missed"]
    assert echoes.echoes(texts) == [["conditions"], ["policy", "proposal", "arrangement", "achieving"], [], []]
    # Such a proposal goes after a clean one whatever its reward, and before one naming a body nobody knows.
    area = "Budget preparation"
    corpus = pd.DataFrame({"economic_area": [area] * 4, "country": ["Chad"] * 4, "test_year": [2020] * 4,
                           "is_met": [1, 0, 1, 1], "description": record})
    echo = Proposal("Finalize draft conditions for the medium-term budget framework", 0.9, 0.9, 0.9, None,
                    echoes=["conditions"])
    invented = Proposal("Submit the budget to the Ministry of Plenty", 0.95, 0.9, 0.9, None,
                        unknown_names=["Ministry of Plenty"])
    clean = Proposal("Prepare a medium-term budget framework for 2027", 0.6, 0.6, 0.9, None)
    assert [p.text for p in different_first([invented, echo, clean], AreaRecord(corpus, area))] == [
        clean.text, echo.text, invented.text]


def test_recommend_lists_the_countrys_precedents_first_only_when_they_resemble_the_proposal():
    import pandas as pd

    from ml.recommend import OWN_COUNTRY_FROM, AreaRecord

    area = "Financial sector"
    corpus = pd.DataFrame({
        "economic_area": [area] * 4, "country": ["Bosnia and Herzegovina", "Bosnia and Herzegovina", "Barbados",
                                                 "Kenya"],
        "test_year": [2002, 2007, 2016, 2019], "is_met": [0, 1, 0, 1],
        "description": ["Adopt a government decree on state-owned banks",
                        "Establish a dedicated unit for microfinance institutions",
                        "Adopt a government decree on the financial sector development strategy",
                        "Publish the financial sector development strategy"]})
    record = AreaRecord(corpus, area)
    strategy, microfinance = record.precedents("Bosnia and Herzegovina", [
        "Finalize a plan for the financial sector development strategy",
        "Submit to parliament a draft law on microfinance institutions"], k=3)
    # Only the country in common: the other countries' closer conditions come first.
    assert [line.split(" (")[0] for line in strategy] == ["Kenya 2019", "Barbados 2016", "Bosnia and Herzegovina 2007"]
    assert float(strategy[2].split("similarity ")[1][:4]) < OWN_COUNTRY_FROM
    # The country's own condition on the same object leads, ahead of others that name the whole area.
    assert microfinance[0].startswith("Bosnia and Herzegovina 2007 (met, similarity")
    assert float(microfinance[0].split("similarity ")[1][:4]) >= OWN_COUNTRY_FROM


def test_recommend_shows_how_often_the_areas_conditions_that_open_as_a_proposal_does_were_met():
    """P(MET) follows the action: an analyst sees the met share of the area's conditions with the same opening."""
    import pandas as pd

    from ml.recommend import AreaRecord

    area = "Revenue administration, including customs"
    texts = ([f"Prepare a report on customs {i}" for i in range(10)] + [f"Enact the tax law {i}" for i in range(10)]
             + ["Adopt a customs code", "Computerize the tax office"])
    corpus = pd.DataFrame({"economic_area": [area] * 22 + ["Debt management"], "country": "Ghana",
                           "is_met": [1] * 9 + [0] + [1] * 3 + [0] * 7 + [1, 1, 1],
                           "description": [*texts, "Prepare a debt strategy"]})
    record = AreaRecord(corpus, area)

    prepare, enact, adopt, empty = record.actions(["prepare a plan for the customs office", "Enact a VAT law",
                                                   "Adopt a law", ""])
    assert (prepare.word, prepare.met, prepare.conditions) == ("prepare", 9, 10)  # not the other area's
    assert (enact.met_share, enact.area_met_share) == (0.3, 14 / 22)
    assert adopt is None and empty is None  # one "Adopt" condition says nothing; no word, no action


def test_recommend_names_the_word_an_answer_slipped_on_and_ranks_it_after_a_clean_proposal():
    import numpy as np
    import pandas as pd
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ml.policy.sampling import Answers, SampledBatch, least_likely_words
    from ml.recommend import AreaRecord, Proposal, different_first

    # A byte-level BPE learnt on a few conditions, so that an unseen word is several tokens.
    record = ["Establish a board for the budget", "Submit the budget law to the board", "Adopt the budget law"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(record * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["[UNK]", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="</s>", unk_token="[UNK]")
    ids = tokenizer("Establish an audling board")["input_ids"] + [tokenizer.eos_token_id]
    pieces = [tokenizer.decode(ids[:i + 1]) for i in range(len(ids))]
    inside = next(i for i, text in enumerate(pieces) if text.endswith("audl"))  # a token within "audling"
    assert not pieces[inside - 1].endswith(" ")  # ... that is not the word's first
    answer = Answers(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([True]), 1)
    batch = SampledBatch(torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long), answer)

    def least(at: int) -> tuple[str, float]:
        logprobs = np.full(len(ids), -0.5)
        logprobs[at] = -12.0
        [found] = least_likely_words(tokenizer, [batch], [logprobs])
        return found

    assert least(inside) == ("audling", -12.0)
    assert least(len(ids) - 2) == ("board", -12.0)
    assert least(len(ids) - 1) == ("", -12.0)  # the EOS: it ended where it hardly would
    # A proposal that slipped goes after a clean one, whatever its reward.
    area = "Revenue administration, including customs"
    corpus = pd.DataFrame({"economic_area": [area] * 3, "country": ["Ghana"] * 3, "test_year": [2020] * 3,
                           "is_met": [1, 0, 1], "description": record})
    slipped = Proposal("Establish an audling board", 0.9, 0.9, 0.9, None, slip="audling")
    clean = Proposal("Submit the customs law to the board", 0.6, 0.6, 0.9, None)
    assert [p.text for p in different_first([slipped, clean], AreaRecord(corpus, area))] == [clean.text, slipped.text]
