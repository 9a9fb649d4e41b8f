// The search page's script: calls the HTTP/JSON API of this origin (POST <gRPC path> with
// protobuf JSON; GET /readyz) and renders with DOM methods only (text, never HTML).
"use strict";

const SEARCH = "/papersearch.v1.SearchService/Search";
const SIMILAR = "/papersearch.v1.SearchService/SimilarPapers";
// No deadline is sent: the server's own applies (serve.default_deadline_s). Past its longest
// (serve.max_deadline_s, which the server writes into the page) by this much, the browser
// gives up on an answer (a proxy that holds the connection open would otherwise leave
// "Searching…" on screen for good).
const GIVE_UP_MARGIN_MS = 5000;
const GIVE_UP_AFTER_MS = Number(document.documentElement.dataset.maxDeadlineMs || 30000)
  + GIVE_UP_MARGIN_MS;
const HEALTH_EVERY_MS = 15000;
const HEALTH_TIMEOUT_MS = 5000;  // a /readyz that hangs reads as a service that does not answer
const KEY_STORAGE = "papersearch-api-key";
const STAGES = [
  ["dense", "Dense"],
  ["sparse", "Sparse"],
  ["fused", "Fused"],
  ["rerank", "Rerank"],
];

const $ = (id) => document.getElementById(id);
let searchSerial = 0;
let similarSerial = 0;
let recommendSerial = 0;
// The status line and the error box belong to the latest action (a search, similar papers,
// recommendations): an earlier one that answers late must not overwrite them.
let statusOwner = null;
const owns = (claim) => claim === statusOwner;
function claimStatus(section = null) {
  statusOwner = {};
  statusSection = section;
  return statusOwner;
}
// The "Similar papers" section whose action owns the status line, if one does: once new
// results (or none) replace it, its answer has no place, and the search that replaced it
// takes the status line back.
let statusSection = null;
// The filter of the results on screen: "Similar papers" and recommendations ask under it,
// not under what the form holds since.
let shownFilter = {};
// Values of the address the form could not take (a date written otherwise, an unknown mode):
// said by the search that follows, not dropped without a word.
let addressNotice = "";
// A search superseded by a newer one is aborted: the server stops its work (rerank, feedback).
let searchAbort = null;
// Likewise a recommendation superseded by a newer one, by Clear or by other examples.
let recommendAbort = null;
// The status line's claim of the latest recommendation, and what it took the line from (the
// owner, its section, the line and the error shown): a recommendation forgotten (other
// examples, Clear), answered or not, gives the line back, with what its owner said meanwhile
// (heldBack): a search still running, or one that ended, says its own words again.
let recommendClaim = null;
let recommendTookFrom = null;
// What an action said while a recommendation held the status line: {claim, text, error}.
let heldBack = null;
// "Similar papers" in flight: a new search or Back aborts them (their results are replaced).
const similarAborts = new Map();  // abort controller -> the section it fills
// The address (its query part) the form and results were last set from: a change of the
// hash alone (the "Skip to results" link) is no new search.
let appliedSearch = null;
// Examples for recommendations: paper id -> title, chosen with "More like this" / "Less like this".
const examples = {positive: new Map(), negative: new Map()};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A signal that aborts when either does, with its reason: AbortSignal.any where the browser
// has it (not Firefox before 124, Safari before 17.4), else a controller of our own.
function eitherSignal(first, second) {
  if (typeof AbortSignal.any === "function") return AbortSignal.any([first, second]);
  const both = new AbortController();
  for (const signal of [first, second]) {
    if (signal.aborted) both.abort(signal.reason);
    else signal.addEventListener("abort", () => both.abort(signal.reason), {once: true});
  }
  return both.signal;
}

async function call(path, body, signal = undefined) {
  const headers = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  // a header value the browser cannot send (a pasted curly quote) fails before any request
  if (key && !/^[\x20-\x7e]+$/.test(key)) {
    throw new ApiError("UNAUTHENTICATED",
                       "the API key has a character other than printable ASCII (keys are ASCII)");
  }
  if (key) headers["x-api-key"] = key;
  const giveUp = AbortSignal.timeout(GIVE_UP_AFTER_MS);
  const stop = signal ? eitherSignal(signal, giveUp) : giveUp;
  const failed = (error) => {
    if (giveUp.aborted) {
      return new ApiError("DEADLINE_EXCEEDED",
                          `no answer within ${GIVE_UP_AFTER_MS / 1000} s: try again`);
    }
    if (error.name === "AbortError") return new ApiError("CANCELLED", "superseded");
    return null;
  };
  let response;
  try {
    response = await fetch(path, {method: "POST", headers, body: JSON.stringify(body),
                                  signal: stop});
  } catch (error) {
    throw failed(error) || new ApiError("UNAVAILABLE", "the service could not be reached");
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (error) {
    const stopped = failed(error);  // given up or superseded while the body came
    if (stopped) throw stopped;
    answer = null;
  }
  if (!response.ok) {
    const failure = answer && answer.error ? answer.error : {};
    throw new ApiError(failure.status || String(response.status),
                       failure.message || response.statusText || "request failed");
  }
  if (answer === null) {  // a proxy's page, say: not the service's JSON
    throw new ApiError("UNKNOWN", "the server's answer was not JSON");
  }
  return answer;
}

function filterFromForm() {
  const filter = {};
  const from = $("published-from").value;
  const to = $("published-to").value;
  const categories = $("categories").value.split(",").map((c) => c.trim()).filter(Boolean);
  if (from) filter.published_from = from;
  if (to) filter.published_to = to;
  if (categories.length) filter.categories = categories;
  return filter;
}

function topK() {
  const value = parseInt($("top-k").value, 10);
  return Number.isFinite(value) ? value : 10;
}

function showError(error) {
  const box = $("error");
  box.textContent = `${error.status || "ERROR"}: ${error.message}`;
  box.hidden = false;
  if (error.status === "UNAUTHENTICATED" || error.status === "PERMISSION_DENIED") {
    $("key-box").open = true;
    box.append(" (enter an API key below the search box)");
  }
}

// Whether an action that claimed the status line may still write it: its own, or taken back
// from similar papers of results it replaced.
function mayWrite(claim) {
  if (owns(claim)) return true;
  if (statusSection === null || statusSection.isConnected) return false;
  claimStatus();
  statusOwner = claim;
  return true;
}

// The status line (and any error) of an action that may no longer own it: written where it
// may, else kept for when a recommendation that took the line gives it back.
function conclude(claim, text, error = null) {
  if (!mayWrite(claim)) {
    // the line as it would stand without the recommendation: this action's where it owned
    // the line, or took it back from similar papers of results since replaced
    const took = owns(recommendClaim) ? recommendTookFrom : null;
    if (took && (took.claim === claim
                 || (took.section !== null && !took.section.isConnected))) {
      if (took.claim !== claim) Object.assign(took, {claim, section: null, error: null});
      heldBack = {claim, text, error};
    }
    return false;
  }
  $("status").textContent = text;
  if (error) showError(error);
  return true;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function formatScore(value) {
  if (value === undefined || value === null) return "\u2014";
  return Number(value).toFixed(3);
}

function safeUrl(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
  } catch (error) {
    return null;
  }
}

function renderScores(hit) {
  const stages = hit.stages || {};
  const list = element("dl", {class: "scores"});
  list.append(element("div", {class: "score total"},
                      element("dt", {}, "Score"), element("dd", {}, formatScore(hit.score))));
  for (const [field, label] of STAGES) {
    const value = stages[field];
    list.append(element("div", {class: value === undefined ? "score unset" : "score",
                                "data-stage": field},
                        element("dt", {}, label), element("dd", {}, formatScore(value))));
  }
  return list;
}

// SearchRequest.explain: each stage's rank and score, the fusion formula, the BM25 terms.
// With query feedback the dense and sparse stages are the expanded query's (what was fused),
// so the dense score there may differ from the hit's own (its cosine to the query as asked).
function renderExplanation(explanation, expanded) {
  if (!explanation) return null;
  const stages = element("ul", {class: "explain-stages"});
  for (const [field, label] of STAGES) {
    const stage = explanation[field];
    if (!stage) continue;
    const rank = stage.rank ? `#${stage.rank}` : "not in its list";
    const name = expanded && (field === "dense" || field === "sparse")
      ? `${label} (expanded query)` : label;
    stages.append(element("li", {"data-stage": field},
                          `${name}: ${rank}, score ${formatScore(stage.score)}`));
  }
  const terms = (explanation.matched_terms || []).map((t) => `${t.term} ${formatScore(t.score)}`);
  return element("details", {class: "explanation"},
                 element("summary", {}, "Why this rank"), stages,
                 explanation.fusion ? element("p", {class: "fusion"}, explanation.fusion) : null,
                 element("p", {class: "terms"},
                         terms.length ? `BM25 terms: ${terms.join(", ")}`
                                      : "No query word in this paper (BM25)."));
}

// ``expanded``: the search ran query feedback (its explanations are the expanded query's).
function renderHit(hit, rank, level, prefix, expanded = false) {
  const paper = hit.paper || {};
  const id = `${prefix}-${rank}`;
  const headingTag = `h${Math.min(level, 6)}`;
  const link = safeUrl(paper.url || "");
  const title = paper.title || paper.paper_id;
  const heading = element(headingTag, {class: "title", id: `${id}-title`},
                          link ? element("a", {href: link, rel: "noopener noreferrer"}, title)
                               : title);
  const meta = element("p", {class: "meta"});
  const authors = (paper.authors || []).join(", ");
  meta.append(element("span", {class: "authors"}, authors || "Unknown authors"));
  if (paper.published) {
    meta.append(" \u00b7 ", element("time", {class: "published", datetime: paper.published},
                                     paper.published));
  }
  meta.append(" \u00b7 ", element("span", {class: "paper-id"}, paper.paper_id));
  const categories = element("ul", {class: "categories", "aria-label": "Categories"});
  for (const category of paper.categories || []) {
    categories.append(element("li", {}, category));
  }
  const similarId = `${id}-similar`;
  const button = element("button", {type: "button", class: "similar-button",
                                    "aria-expanded": "false", "aria-controls": similarId},
                         "Similar papers",
                         element("span", {class: "visually-hidden"}, ` to \u201c${title}\u201d`));
  const similar = element("section", {class: "similar", id: similarId, hidden: true,
                                      "aria-labelledby": `${similarId}-heading`});
  button.addEventListener("click", () => toggleSimilar(paper, button, similar, level + 1));
  const actions = element("div", {class: "actions"}, button,
                          exampleButton(paper, title, "positive", "More like this"),
                          exampleButton(paper, title, "negative", "Less like this"));
  const article = element("article", {class: "hit", "aria-labelledby": `${id}-title`},
                          element("span", {class: "rank", "aria-hidden": "true"}, rank),
                          heading, meta,
                          paper.categories && paper.categories.length ? categories : null,
                          ...(paper.abstract ? renderAbstract(paper.abstract, id) : []),
                          renderScores(hit), renderExplanation(hit.explanation, expanded), actions,
                          similar);
  return element("li", {"data-paper-id": paper.paper_id}, article);
}

// Shows an abstract's toggle while the three-line clamp hides some of it (how much fits
// depends on the window's width and zoom, so it is measured, on screen and on each resize)
// or while it is open.
const clamped = new ResizeObserver((entries) => {
  for (const {target} of entries) {
    if (!target.isConnected) {  // replaced by other results
      clamped.unobserve(target);
      continue;
    }
    const open = target.classList.contains("open");
    target.nextElementSibling.hidden = !open && target.scrollHeight <= target.clientHeight;
  }
});

// The abstract, clamped to three lines, with a button that shows the rest when it is cut.
function renderAbstract(text, id) {
  const paragraph = element("p", {class: "abstract", id: `${id}-abstract`}, text);
  const toggle = element("button", {type: "button", class: "abstract-toggle secondary",
                                    "aria-expanded": "false", "aria-controls": paragraph.id,
                                    hidden: true},
                         "Whole abstract");
  clamped.observe(paragraph);
  toggle.addEventListener("click", () => {
    const open = paragraph.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
    toggle.textContent = open ? "Shorter abstract" : "Whole abstract";
  });
  return [paragraph, toggle];
}

// A toggle that adds the paper to (or removes it from) the positive or negative examples.
function exampleButton(paper, title, kind, label) {
  const button = element("button", {type: "button", class: `example-button ${kind}`,
                                    "data-kind": kind, "data-paper-id": paper.paper_id,
                                    "aria-pressed": String(examples[kind].has(paper.paper_id))},
                         label,
                         element("span", {class: "visually-hidden"}, `: “${title}”`));
  button.addEventListener("click", () => {
    const other = kind === "positive" ? "negative" : "positive";
    // a recommended paper's button goes with the recommendations it is in: the focus moves
    // to Recommend (for the new examples), or Clear where no example is positive
    const recommended = button.closest("#recommendations") !== null;
    if (examples[kind].has(paper.paper_id)) examples[kind].delete(paper.paper_id);
    else {
      examples[kind].set(paper.paper_id, title);
      examples[other].delete(paper.paper_id);
    }
    renderExamples();
    forgetRecommendations();
    if (recommended) {
      ($("recommend-button").disabled ? $("clear-examples") : $("recommend-button")).focus();
    }
  });
  return button;
}

// Recommendations are for the examples they were asked with: other examples make them (and
// one still on its way) out of date.
function forgetRecommendations() {
  ++recommendSerial;
  if (recommendAbort) recommendAbort.abort();
  recommendAbort = null;
  $("recommendations").replaceChildren();
  if (owns(recommendClaim) && recommendTookFrom) {  // back to the action it was taken from
    const took = recommendTookFrom;
    const said = heldBack && heldBack.claim === took.claim ? heldBack : null;
    // similar papers whose section is gone (new results, new recommendations) say nothing
    const gone = !said && took.section !== null && !took.section.isConnected;
    statusOwner = gone ? null : took.claim;
    statusSection = gone ? null : took.section;
    clearError();
    $("status").textContent = said ? said.text : gone ? "" : took.text;
    if (said && said.error) showError(said.error);
    else if (!gone && took.error !== null) {  // what was on screen, a search's notice say
      $("error").textContent = took.error;
      $("error").hidden = false;
    }
  }
  recommendClaim = null;
  recommendTookFrom = null;
  heldBack = null;
}

// Whether an answer may move the focus to what it shows: not while the user has gone on to
// something else (typing a new query, say), only from the control that asked, or from nowhere.
function focusIsFree(control) {
  const active = document.activeElement;
  return active === null || active === document.body || active === control;
}

function renderExamples() {
  for (const button of document.querySelectorAll(".example-button")) {
    const chosen = examples[button.dataset.kind].has(button.dataset.paperId);
    button.setAttribute("aria-pressed", String(chosen));
  }
  for (const kind of ["positive", "negative"]) {
    $(`${kind}-examples`).replaceChildren(
      ...[...examples[kind].values()].map((title) => element("li", {}, title)));
  }
  const any = examples.positive.size + examples.negative.size > 0;
  $("recommend").hidden = !any;
  $("recommend-button").disabled = examples.positive.size === 0;
}

async function recommend() {
  const serial = ++recommendSerial;
  if (!owns(recommendClaim)) {  // a second Recommend keeps what the first took the line from
    recommendTookFrom = {claim: statusOwner, section: statusSection,
                         text: $("status").textContent,
                         error: $("error").hidden ? null : $("error").textContent};
    heldBack = null;
  }
  const claim = claimStatus();
  recommendClaim = claim;
  clearError();
  $("status").textContent = "Finding recommendations…";
  if (recommendAbort) recommendAbort.abort();
  recommendAbort = new AbortController();
  try {
    const answer = await call(SIMILAR, {positive_ids: [...examples.positive.keys()],
                                        negative_ids: [...examples.negative.keys()],
                                        top_k: topK(), filter: shownFilter},
                              recommendAbort.signal);
    if (serial !== recommendSerial) return;
    const hits = answer.hits || [];
    $("recommendations").replaceChildren(
      ...hits.map((hit, index) => renderHit(hit, index + 1, 4, `recommended-${serial}`)));
    if (!owns(claim)) return;
    $("status").textContent = `${hits.length} recommendation${hits.length === 1 ? "" : "s"}.`;
    if (focusIsFree($("recommend-button"))) $("recommendations-heading").focus();
  } catch (error) {
    if (serial !== recommendSerial || !owns(claim)) return;
    $("status").textContent = "";
    showError(error);
  } finally {
    if (serial === recommendSerial) recommendAbort = null;
  }
}

function clearExamples() {
  forgetRecommendations();  // an answer still on its way is for the examples cleared
  examples.positive.clear();
  examples.negative.clear();
  renderExamples();
  $("results-heading").focus();  // the focused Clear button is hidden with its panel
}

async function toggleSimilar(paper, button, section, level) {
  if (button.getAttribute("aria-expanded") === "true") {
    button.setAttribute("aria-expanded", "false");
    section.hidden = true;
    section.replaceChildren();
    return;
  }
  button.setAttribute("aria-expanded", "true");
  button.disabled = true;
  const serial = ++similarSerial;
  const claim = claimStatus(section);
  clearError();
  $("status").textContent = `Finding papers similar to \u201c${paper.title || paper.paper_id}\u201d\u2026`;
  const abort = new AbortController();
  similarAborts.set(abort, section);
  try {
    const answer = await call(SIMILAR, {paper_id: paper.paper_id, top_k: Math.min(topK(), 5),
                                        filter: shownFilter}, abort.signal);
    const hits = answer.hits || [];
    const headingId = `${section.id}-heading`;
    const heading = element(`h${Math.min(level, 6)}`, {id: headingId, tabindex: "-1"},
                            `Similar to \u201c${paper.title || paper.paper_id}\u201d`);
    const list = element("ol", {class: "hits nested"});
    hits.forEach((hit, index) => list.append(renderHit(hit, index + 1, level + 1,
                                                       `${section.id}-${serial}`)));
    section.replaceChildren(heading, hits.length ? list
                                                 : element("p", {}, "No similar papers found."));
    section.hidden = false;
    if (!section.isConnected) return;  // new results replaced the ones it was for
    if (!conclude(claim, `${hits.length} similar paper${hits.length === 1 ? "" : "s"}.`)) {
      return;  // a newer action
    }
    if (focusIsFree(button)) heading.focus();
  } catch (error) {
    button.setAttribute("aria-expanded", "false");
    if (!section.isConnected) return;
    conclude(claim, "", error);
  } finally {
    similarAborts.delete(abort);
    const refocus = document.activeElement === document.body;  // disabling dropped it there
    button.disabled = false;
    if (refocus && button.isConnected) button.focus();
  }
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("query").value.trim();
  if (!query) {  // spaces only: the box's "required" let it through
    showError(new ApiError("INVALID_ARGUMENT", "the query is blank: type what to search for"));
    $("query").focus();
    return;
  }
  const request = {query, top_k: topK(), mode: $("mode").value, rerank: $("rerank").checked,
                   explain: $("explain").checked, filter: filterFromForm()};
  // Query feedback: the server's default until the box is changed (or the address says).
  if ($("feedback").dataset.asked) request.feedback = $("feedback").checked;
  // blank: no cut-off; the server says what it refuses (out of -1..1, or BM25 only)
  if ($("min-relevance").value !== "") request.min_relevance = Number($("min-relevance").value);
  const serial = ++searchSerial;
  const claim = claimStatus();
  if (searchAbort) searchAbort.abort();
  searchAbort = new AbortController();
  abortSimilar();
  remember();
  clearError();
  if (addressNotice) showError(new ApiError("INVALID_ARGUMENT", addressNotice));
  addressNotice = "";
  $("status").textContent = "Searching\u2026";
  $("search-form").setAttribute("aria-busy", "true");
  try {
    const answer = await call(SEARCH, request, searchAbort.signal);
    if (serial !== searchSerial) return;  // a newer search is under way
    const hits = answer.hits || [];
    const list = $("results");
    const expanded = Boolean(answer.feedback);
    abortSimilar(list);  // asked, since this search began, for the results it now replaces
    list.replaceChildren(...hits.map((hit, index) => renderHit(hit, index + 1, 3, "hit",
                                                               expanded)));
    shownFilter = request.filter;
    const total = (answer.timings_ms || {}).total;
    const mode = [...$("mode").options].find((option) => option.value === request.mode);
    const details = [
      mode ? mode.textContent : request.mode,  // the mode asked for, not the one picked since
      answer.reranked ? "reranked" : "not reranked",
    ];
    if (answer.feedback) details.push("query feedback");
    // untouched, the box shows what the server's default did (on, unless shed under load)
    if (!$("feedback").dataset.asked) $("feedback").checked = Boolean(answer.feedback);
    if (total !== undefined) details.push(`${Math.round(total)} ms`);
    if (answer.below_min_relevance) {
      details.push(`${answer.below_min_relevance} hidden by the relevance cut-off`);
    }
    const filtered = Object.keys(request.filter).length > 0;
    // unless similar papers or recommendations were asked for since
    conclude(claim, hits.length
      ? `${hits.length} result${hits.length === 1 ? "" : "s"} for \u201c${query}\u201d (${details.join(", ")}).`
      : `No results for \u201c${query}\u201d${filtered ? " with these filters" : ""} (${details.join(", ")}).`);
  } catch (error) {
    if (serial !== searchSerial) return;
    abortSimilar($("results"));
    $("results").replaceChildren();
    shownFilter = {};
    conclude(claim, "", error);
  } finally {
    if (serial === searchSerial) {
      $("search-form").removeAttribute("aria-busy");
      searchAbort = null;  // answered: nothing left to abort
    }
  }
}

// The form's state in the address: shareable, and each distinct search one history entry
// that Back and Forward run again; restored on load. Fields the address lacks get their
// defaults (the page's own markup).
const FIELDS = [["q", "query"], ["mode", "mode"], ["from", "published-from"],
                ["to", "published-to"], ["cat", "categories"], ["k", "top-k"],
                ["min", "min-relevance"]];
const DEFAULTS = new Map(FIELDS.map(([, id]) => [id, $(id).defaultValue ?? $(id).value]));

function address() {
  const params = new URLSearchParams();
  for (const [name, id] of FIELDS) {
    if ($(id).value) params.set(name, $(id).value);
  }
  if (!$("rerank").checked) params.set("rerank", "0");
  if ($("explain").checked) params.set("explain", "1");
  if ($("feedback").dataset.asked) params.set("fb", $("feedback").checked ? "1" : "0");
  return `${location.pathname}?${params}`;
}

function remember() {
  const next = address();
  if (next !== `${location.pathname}${location.search}`) history.pushState(null, "", next);
  appliedSearch = location.search;
}

// "Similar papers" of results about to be replaced: the server stops their work.
// Every "Similar papers" in flight, or only those in ``within`` (results about to be replaced).
function abortSimilar(within = null) {
  for (const [abort, section] of similarAborts) {
    if (within !== null && !within.contains(section)) continue;
    abort.abort();
    similarAborts.delete(abort);
  }
}

function restore() {
  appliedSearch = location.search;
  const params = new URLSearchParams(location.search);
  const ignored = [];
  for (const [name, id] of FIELDS) {
    $(id).value = params.has(name) ? params.get(name) : DEFAULTS.get(id);
    if ($(id).selectedIndex < 0) $(id).selectedIndex = 0;  // an unknown mode
    // a text box drops line breaks, and searches what is left: that is no value left out
    if (params.has(name) && $(id).value !== params.get(name).replace(/[\r\n]/g, "")) {
      ignored.push(`${name}=${params.get(name)}`);
    }
  }
  addressNotice = ignored.length
    ? `the address's ${ignored.join(", ")} ${ignored.length === 1 ? "is" : "are"} not a ` +
      "value this form takes: left out (the defaults apply)"
    : "";
  // the page writes rerank=0 when unticked; a form sent before this script ran writes its
  // hidden rerank=0, then rerank=1 when ticked: the last value counts
  $("rerank").checked = params.getAll("rerank").at(-1) !== "0";
  $("explain").checked = params.get("explain") === "1";
  if (["0", "1"].includes(params.get("fb"))) {
    $("feedback").checked = params.get("fb") === "1";
    $("feedback").dataset.asked = "yes";
  } else {
    delete $("feedback").dataset.asked;
  }
  return params.has("q");
}

// Back / Forward: the search that address holds, or the empty page. A move within the page
// (the "Skip to results" link, Back from it) keeps the form and the results as they are.
function navigated() {
  if (location.search === appliedSearch) return;
  if (restore()) {
    search();
    return;
  }
  ++searchSerial;
  claimStatus();  // a late answer of another action does not write over the empty page
  shownFilter = {};
  if (searchAbort) searchAbort.abort();
  searchAbort = null;
  abortSimilar();
  $("search-form").removeAttribute("aria-busy");
  $("results").replaceChildren();
  $("status").textContent = "";
  clearError();
}

async function health() {
  const badge = $("health");
  let state = "down";
  let text = "Service: unreachable";
  try {
    const response = await fetch("/readyz", {cache: "no-store",
                                             signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS)});
    const answer = await response.json();
    const status = answer.status || (answer.error && answer.error.status) || response.status;
    state = status === "SERVING" ? "ready" : "not-ready";
    text = state === "ready" ? "Service: ready" : `Service: not ready (${status})`;
  } catch (error) {
    // unreachable, as set above
  }
  if (badge.dataset.state !== state) {
    badge.dataset.state = state;
    badge.textContent = text;
  }
}

function start() {
  const keyField = $("api-key");
  keyField.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyField.addEventListener("input", () => {
    if (keyField.value) sessionStorage.setItem(KEY_STORAGE, keyField.value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  $("search-form").addEventListener("submit", search);
  $("recommend-button").addEventListener("click", recommend);
  $("clear-examples").addEventListener("click", clearExamples);
  $("feedback").addEventListener("change", () => { $("feedback").dataset.asked = "yes"; });
  window.addEventListener("popstate", navigated);
  health();
  setInterval(health, HEALTH_EVERY_MS);
  if (restore()) {
    // the address as this page writes it, in place of the one it came with (a plain GET of
    // the form, say): the same search, one history entry
    history.replaceState(null, "", address());
    appliedSearch = location.search;
    search();
  } else {
    $("query").focus();
  }
}

start();
