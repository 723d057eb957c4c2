() => {
  /*
   * Easel's keyboard and mouse habits, run once when the page loads (Gradio's `js=` launch option).
   *
   *  - Ctrl/Cmd+Enter clicks Generate of the visible generation tab; Esc clicks its Interrupt while a job runs.
   *  - Ctrl/Cmd+Up/Down in a prompt box changes the emphasis of the selection (or the word under the cursor)
   *    as A1111 does: "word" -> "(word:1.1)" -> "(word:1.2)"; back at 1.0 the brackets go away.
   *  - An image dropped on a prompt box goes to the tab's hidden upload button; the server reads its
   *    generation parameters (as PNG Info does) and fills the fields.
   *  - When a generation that took longer than a set time ends: a short tone (WebAudio, no file) and/or a
   *    browser notification, as the options say (both off by default).
   *
   * Everything is found by the elem_ids set in webui/ui; nothing is fetched from the network.
   */
  if (window.easel) return;

  const TABS = ["txt2img", "img2img"];
  const PROMPTS = TABS.flatMap((tab) => [`#${tab}_prompt`, `#${tab}_neg_prompt`]).join(", ");
  const byId = (id) => document.getElementById(id);
  const shown = (el) => !!el && el.offsetParent !== null; // an inactive tab's panel is display: none
  const activeTab = () => TABS.find((tab) => shown(byId(`${tab}_generate`))) || null;
  // The progress line shows a bar (.easel-progress) from "Queued" until the job ends.
  const running = (tab) => !!document.querySelector(`#${tab}_progress .easel-progress`);

  /** The options the page needs (a hidden textbox the server fills: webui/ui/frontend.py). */
  function options() {
    const box = document.querySelector("#easel_frontend_options textarea, #easel_frontend_options input");
    try {
      return JSON.parse((box && box.value) || "{}");
    } catch (error) {
      return {};
    }
  }

  /** Ask the server for the current options (the hidden button refreshes the hidden textbox). */
  function refreshOptions() {
    const button = byId("easel_frontend_refresh");
    if (button) button.click();
  }

  // ---- emphasis: Ctrl+Up / Ctrl+Down ------------------------------------------------------------------
  const WORD_BREAK = /[\s,.()[\]{}<>:;|!?"'`=\/\\]/;
  const NUMBER = "-?\\d+(?:\\.\\d+)?";

  function wordAt(text, at) {
    let start = at;
    let end = at;
    while (start > 0 && !WORD_BREAK.test(text[start - 1])) start -= 1;
    while (end < text.length && !WORD_BREAK.test(text[end])) end += 1;
    return [start, end];
  }

  /** [open, close] of the innermost bracket pair `open`..`close` around position `at`, or null. */
  function enclosing(text, at, open, close) {
    let depth = 0;
    let start = -1;
    for (let i = at - 1; i >= 0; i -= 1) {
      if (text[i] === close) depth += 1;
      else if (text[i] === open) {
        if (depth === 0) {
          start = i;
          break;
        }
        depth -= 1;
      }
    }
    if (start < 0) return null;
    depth = 0;
    for (let i = at; i < text.length; i += 1) {
      if (text[i] === open) depth += 1;
      else if (text[i] === close) {
        if (depth === 0) return [start, i];
        depth -= 1;
      }
    }
    return null;
  }

  function formatWeight(value, step) {
    const digits = Math.max(1, (String(step).split(".")[1] || "").length);
    return String(Number(value.toFixed(digits)));
  }

  /**
   * The prompt after one emphasis step on text[start:end], and the new selection:
   * {text, start, end}, or null when there is nothing to change.
   */
  function emphasis(text, start, end, delta, step) {
    if (start === end) {
      // No selection: a LoRA tag around the cursor, an "(x:w)" group around it, or the word under it.
      const tag = enclosing(text, start, "<", ">");
      if (tag && /:-?\d+(?:\.\d+)?$/.test(text.slice(tag[0] + 1, tag[1]))) {
        const inner = text.slice(tag[0] + 1, tag[1]);
        const cut = inner.lastIndexOf(":");
        const weight = formatWeight(Number(inner.slice(cut + 1)) + delta, step);
        const edited = `<${inner.slice(0, cut)}:${weight}>`;
        const after = tag[0] + edited.length;
        return { text: text.slice(0, tag[0]) + edited + text.slice(tag[1] + 1), start: after - 1, end: after - 1 };
      }
      const group = enclosing(text, start, "(", ")");
      if (group && new RegExp(`:${NUMBER}$`).test(text.slice(group[0] + 1, group[1]))) {
        const inner = text.slice(group[0] + 1, group[1]);
        start = group[0] + 1;
        end = start + inner.lastIndexOf(":");
      } else {
        [start, end] = wordAt(text, start);
      }
    }
    // Trim spaces at the ends of the selection.
    while (start < end && /\s/.test(text[start])) start += 1;
    while (end > start && /\s/.test(text[end - 1])) end -= 1;
    if (start === end) return null;

    let selected = text.slice(start, end);
    const whole = selected.match(new RegExp(`^\\(([\\s\\S]*):(${NUMBER})\\)$`));
    if (whole) {
      // The selection is a whole "(x:w)" group: work on its inside.
      start += 1;
      end = start + whole[1].length;
      selected = whole[1];
    }
    const weighted = text[start - 1] === "(" && text.slice(end).match(new RegExp(`^:(${NUMBER})\\)`));
    if (weighted) {
      const value = Number(weighted[1]) + delta;
      const tail = end + weighted[0].length;
      if (Math.abs(value - 1) < step / 2) {
        // Back at 1.0: unwrap, as A1111 does.
        const out = text.slice(0, start - 1) + selected + text.slice(tail);
        return { text: out, start: start - 1, end: end - 1 };
      }
      const out = `${text.slice(0, end)}:${formatWeight(value, step)})${text.slice(tail)}`;
      return { text: out, start, end };
    }
    const out = `${text.slice(0, start)}(${selected}:${formatWeight(1 + delta, step)})${text.slice(end)}`;
    return { text: out, start: start + 1, end: end + 1 };
  }

  function editEmphasis(area, up) {
    const step = Number(options().keyedit_precision_attention) || 0.1;
    const edit = emphasis(area.value, area.selectionStart, area.selectionEnd, up ? step : -step, step);
    if (!edit) return false;
    area.value = edit.text;
    area.setSelectionRange(edit.start, edit.end);
    area.dispatchEvent(new Event("input", { bubbles: true })); // Gradio's value follows the input event
    return true;
  }

  // ---- keys ---------------------------------------------------------------------------------------------
  document.addEventListener(
    "keydown",
    (event) => {
      const mod = event.ctrlKey || event.metaKey;
      if (mod && event.key === "Enter") {
        const tab = activeTab();
        if (!tab) return;
        event.preventDefault();
        byId(`${tab}_generate`).click();
        return;
      }
      if (mod && !event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
        const area = event.target;
        if (area instanceof HTMLTextAreaElement && area.closest(PROMPTS) && editEmphasis(area, event.key === "ArrowUp")) {
          event.preventDefault();
        }
        return;
      }
      if (event.key === "Escape" && !event.defaultPrevented) {
        const tab = activeTab();
        // Esc first closes what is open (a dropdown's list, the gallery's full view); then it interrupts.
        const open = document.querySelector(`[role=listbox], #${tab}_gallery .preview`);
        if (tab && running(tab) && !open) byId(`${tab}_interrupt`).click();
      }
    },
    true,
  );

  // ---- an image dropped on a prompt box -------------------------------------------------------------------
  const dropTarget = (event) => {
    const box = event.target instanceof Element ? event.target.closest(PROMPTS) : null;
    const types = event.dataTransfer ? Array.from(event.dataTransfer.types) : [];
    return box && types.includes("Files") ? box : null;
  };
  document.addEventListener(
    "dragover",
    (event) => {
      if (dropTarget(event)) {
        event.preventDefault(); // allow the drop (the browser would otherwise open the file)
        event.dataTransfer.dropEffect = "copy";
      }
    },
    true,
  );
  document.addEventListener(
    "drop",
    (event) => {
      const box = dropTarget(event);
      if (!box) return;
      const file = Array.from(event.dataTransfer.files).find((f) => f.type.startsWith("image/"));
      if (!file) return;
      event.preventDefault();
      event.stopPropagation();
      const tab = box.id.split("_")[0];
      const input = document.querySelector(`#${tab}_drop_image input[type=file]`);
      if (!input) return;
      const files = new DataTransfer();
      files.items.add(file);
      input.files = files.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    },
    true,
  );

  // ---- notification when a long job ends ---------------------------------------------------------------
  let audio = null;
  function tone(volume) {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    audio.resume();
    const gain = audio.createGain();
    gain.connect(audio.destination);
    const now = audio.currentTime;
    const level = Math.max(0.0001, Math.min(1, volume) * 0.3);
    [660, 880].forEach((frequency, index) => {
      // two short sine notes, each faded in and out so they do not click
      const at = now + index * 0.18;
      const note = audio.createOscillator();
      note.type = "sine";
      note.frequency.value = frequency;
      const envelope = audio.createGain();
      envelope.gain.setValueAtTime(0.0001, at);
      envelope.gain.exponentialRampToValueAtTime(level, at + 0.02);
      envelope.gain.exponentialRampToValueAtTime(0.0001, at + 0.16);
      note.connect(envelope).connect(gain);
      note.start(at);
      note.stop(at + 0.17);
    });
  }

  function notify(tab, seconds) {
    const opts = options();
    const summary = (byId(`${tab}_progress`) || {}).innerText || "";
    const failed = shown(byId(`${tab}_error`));
    const notice = { tab, seconds, failed, sound: !!opts.notification_audio, browser: false };
    if (opts.notification_audio) {
      try {
        tone((Number(opts.notification_volume) || 0) / 100);
      } catch (error) {
        notice.sound = false; // no audio device: the notification still counts
      }
    }
    if (opts.easel_notification_browser && "Notification" in window && Notification.permission === "granted") {
      notice.browser = true;
      const title = failed ? `Easel: ${tab} failed` : `Easel: ${tab} finished`;
      new Notification(title, { body: summary.trim() || `after ${Math.round(seconds)} s`, tag: "easel" });
    }
    window.easel.notices.push(notice);
  }

  let asked = false;
  function askPermission() {
    if (asked || !options().easel_notification_browser || !("Notification" in window)) return;
    if (Notification.permission === "default") {
      asked = true;
      Notification.requestPermission();
    }
  }

  // Browsers let a page ask only from a user's click or key press.
  document.addEventListener("click", askPermission, true);
  document.addEventListener("keydown", askPermission, true);

  // Poll (twice a second) rather than observe every DOM change Gradio makes: a job's start and end, and
  // tooltips for the icon buttons rendered since.
  const started = {};
  setInterval(() => {
    for (const tab of TABS) {
      const now = running(tab);
      if (now && !started[tab]) {
        started[tab] = performance.now();
        refreshOptions();
      } else if (!now && started[tab]) {
        const seconds = (performance.now() - started[tab]) / 1000;
        started[tab] = 0;
        const least = Number(options().easel_notification_min_seconds);
        if (seconds >= (Number.isFinite(least) ? least : 10)) notify(tab, seconds);
      }
    }
    document.querySelectorAll("button.easel-icon:not([title])").forEach((button) => {
      button.title = button.textContent.trim();
    });
  }, 500);

  window.easel = { emphasis, editEmphasis, notify, tone, options, notices: [] };
}
