// Reading-screen controls: window levels, invert and zoom on a canvas copy of each 8-bit view, synchronized
// scrolling of both views, and keyboard shortcuts. Answers are ordinary form posts; the server keeps time.
(() => {
  "use strict";
  const $ = (selector) => document.querySelector(selector);
  const upper = $("#upper"), lower = $("#lower"), zoom = $("#zoom"), invert = $("#invert");
  const form = $("#answer-form");
  const defaultUpper = Math.round(parseFloat(document.body.dataset.upper || "1") * 100);
  const saved = (key, fallback) => { try { return localStorage.getItem(key) ?? fallback; } catch { return fallback; } };
  const save = (key, value) => { try { localStorage.setItem(key, value); } catch { /* private mode */ } };

  upper.value = defaultUpper;
  invert.checked = saved("bonescan.invert", "1") === "1";
  zoom.value = saved("bonescan.zoom", "100");

  const views = [...document.querySelectorAll(".view")].map((figure) => ({
    img: figure.querySelector("img"), canvas: figure.querySelector("canvas"),
    scroller: figure.querySelector(".scroller"), pixels: null,
  }));

  function lookupTable() {
    const lo = (Number(lower.value) / 100) * 255;
    const hi = Math.max((Number(upper.value) / 100) * 255, lo + 1);
    const table = new Uint8ClampedArray(256);
    for (let i = 0; i < 256; i++) {
      const grey = Math.round(Math.min(1, Math.max(0, (i - lo) / (hi - lo))) * 255);
      table[i] = invert.checked ? 255 - grey : grey;
    }
    return table;
  }

  function draw() {
    const table = lookupTable();
    for (const view of views) {
      if (!view.pixels) continue;
      const source = view.pixels.data;
      const out = view.context.createImageData(view.pixels.width, view.pixels.height);
      for (let p = 0; p < source.length; p += 4) {
        const grey = table[source[p]];
        out.data[p] = grey; out.data[p + 1] = grey; out.data[p + 2] = grey; out.data[p + 3] = 255;
      }
      view.context.putImageData(out, 0, 0);
      view.scroller.classList.toggle("inverted", invert.checked);
    }
    $("#upper-out").textContent = `${upper.value}%`;
    $("#lower-out").textContent = `${lower.value}%`;
    $("#zoom-out").textContent = `${(Number(zoom.value) / 100).toFixed(2).replace(/\.?0+$/, "")}×`;
  }

  function layout() {
    const factor = Number(zoom.value) / 100;
    for (const view of views) {
      const element = view.pixels ? view.canvas : view.img;
      const fraction = { top: view.scroller.scrollTop / Math.max(1, view.scroller.scrollHeight),
                         left: view.scroller.scrollLeft / Math.max(1, view.scroller.scrollWidth) };
      element.style.height = `${Math.floor(view.scroller.clientHeight * factor)}px`;
      view.scroller.scrollTop = fraction.top * view.scroller.scrollHeight;
      view.scroller.scrollLeft = fraction.left * view.scroller.scrollWidth;
    }
  }

  function prepare(view) {
    const { img, canvas } = view;
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    view.context = canvas.getContext("2d", { willReadFrequently: true });
    view.context.drawImage(img, 0, 0);
    view.pixels = view.context.getImageData(0, 0, canvas.width, canvas.height);
    img.hidden = true; canvas.hidden = false;
    layout(); draw();
  }

  for (const view of views) {
    if (view.img.complete && view.img.naturalWidth) prepare(view);
    else view.img.addEventListener("load", () => prepare(view), { once: true });
    view.scroller.addEventListener("scroll", () => {
      for (const other of views) {
        if (other === view) continue;
        other.scroller.scrollTop = view.scroller.scrollTop;
        other.scroller.scrollLeft = view.scroller.scrollLeft;
      }
    });
  }

  upper.addEventListener("input", draw);
  lower.addEventListener("input", draw);
  invert.addEventListener("change", () => { save("bonescan.invert", invert.checked ? "1" : "0"); draw(); });
  zoom.addEventListener("input", () => { save("bonescan.zoom", zoom.value); layout(); draw(); });
  window.addEventListener("resize", layout);
  $("#reset").addEventListener("click", resetDisplay);

  function resetDisplay() {
    upper.value = defaultUpper; lower.value = 0; zoom.value = 100; save("bonescan.zoom", "100");
    layout(); draw();
  }

  function step(input, delta) {
    input.value = Math.min(Number(input.max), Math.max(Number(input.min), Number(input.value) + delta));
    input.dispatchEvent(new Event("input"));
  }

  function flash(element) {
    element.classList.remove("flash"); void element.offsetWidth; element.classList.add("flash");
  }

  let submitting = false;
  if (form) form.addEventListener("submit", (event) => {
    if (submitting) { event.preventDefault(); return; }  // one post per answer, however fast the keys
    submitting = true;
  });

  function choose(name, value) {
    const input = form && form.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) input.checked = true;
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target.matches && target.matches("input:not([type]), input[type=password], input[type=text]")) return;
    const onSlider = target.matches && target.matches("input[type=range]");
    const key = event.key;
    let handled = true;
    if (key === "m" || key === "M") choose("answer", "metastasis");
    else if (key === "n" || key === "N") choose("answer", "no-metastasis");
    else if (/^[1-5]$/.test(key)) choose("confidence", key);
    else if (key === "Enter") {
      if (!form) handled = false;
      else if (form.querySelector('input[name="answer"]:checked')) form.requestSubmit();
      else flash($("#answer-choices"));
    }
    else if (key === "i" || key === "I") { invert.checked = !invert.checked; invert.dispatchEvent(new Event("change")); }
    else if (key === "+" || key === "=") step(zoom, 25);
    else if (key === "-") step(zoom, -25);
    else if (key === "0") resetDisplay();
    else if ((key === "ArrowUp" || key === "ArrowDown") && !onSlider) step(upper, key === "ArrowUp" ? 2 : -2);
    else if (key === "p" || key === "P") $("#pause-form").requestSubmit();
    else handled = false;
    if (handled) event.preventDefault();
  });

  draw();
})();
