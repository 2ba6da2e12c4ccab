// unetviz diagram panel: pan/zoom (svg-pan-zoom, vendored next to this file), title and legend
// moved out of the zoomed area, node <-> table row selection, the search hit highlighted.
// Runs as a gr.HTML js_on_load body: `element` is the component's root.
//
// gradio patches a gr.HTML's DOM in place on a new value (the <svg> element survives, its
// children are replaced) and may re-mount a component, so nothing here is bound to one drawing
// or one component: the buttons and clicks are delegated from the document once and look up
// the panel's current pan/zoom instance, and `bind()` runs after every change of the page and
// (re)binds pan/zoom on every panel whose SVG has no pan/zoom viewport of its own, i.e. on
// every new drawing.
(function (element) {
  const NS = "http://www.w3.org/2000/svg";
  const nameOf = (g) => {
    const t = g.querySelector(":scope > title");
    return t ? t.textContent.replace(/^cluster_/, "") : "";
  };
  const state = (window.__uvPanels = window.__uvPanels || {});
  const parts = (box) => {
    const panel = box && box.querySelector(".uv-panel");
    const svg = panel && panel.querySelector(":scope > svg");
    return { box, panel, svg };
  };

  function moveTitleAndLegend(box, svg) {
    const g0 = svg.querySelector("g.graph");
    const texts = [...g0.querySelectorAll("text")].filter((t) => !t.closest("g.node, g.cluster, g.edge"));
    if (texts.length) box.querySelector(".uv-title").textContent = texts.map((t) => t.textContent).join(" ");
    texts.forEach((t) => t.remove());
    // graphviz paints the whole canvas white: drop it so "fit" fits the drawing itself
    // (directly, or inside the graph tooltip's <a> when the graph has a tooltip)
    [...g0.children].filter((e) => e.tagName === "polygon").forEach((p) => p.remove());
    [...g0.children]
      .filter((e) => e.tagName === "g" && !e.getAttribute("class"))
      .forEach((g) => g.querySelectorAll("polygon").forEach((p) => p.remove()));
    const leg = [...svg.querySelectorAll("g.node")].find((n) => nameOf(n) === "legend");
    const legBox = box.querySelector(".uv-legend");
    if (!leg) return; // drawn without one: the page gave it as HTML
    legBox.innerHTML = "";
    const bb = leg.getBBox();
    const s = document.createElementNS(NS, "svg");
    s.setAttribute("viewBox", `${bb.x - 2} ${bb.y - 2} ${bb.width + 4} ${bb.height + 4}`);
    s.setAttribute("width", String(Math.round((bb.width + 4) * 1.25)));
    s.setAttribute("height", String(Math.round((bb.height + 4) * 1.25)));
    s.appendChild(leg);
    legBox.appendChild(s);
  }

  function highlight(panel, name, centre) {
    const st = state[panel.id];
    if (!st || !st.svg.isConnected) return false;
    st.svg.querySelectorAll(".uv-selected").forEach((n) => n.classList.remove("uv-selected"));
    const hit = [...st.svg.querySelectorAll("g.node, g.cluster")].find((n) => nameOf(n) === name);
    if (!hit) return false;
    hit.classList.add("uv-selected");
    if (centre) {
      if (st.pz.getZoom() < 1) st.pz.zoom(1);
      const r = hit.getBoundingClientRect();
      const p = panel.getBoundingClientRect();
      st.pz.panBy({ x: p.left + p.width / 2 - (r.left + r.width / 2), y: p.top + p.height / 2 - (r.top + r.height / 2) });
    }
    return true;
  }
  window.__uvHighlight = (name) => {
    const panel = document.getElementById("diagram-svg");
    return panel ? highlight(panel, name, true) : false;
  };
  // the Architecture tab's search: the best hit (the table's first row) is highlighted and
  // centred; an empty search clears the highlight
  window.__uvSearchHit = (query) => {
    const panel = document.getElementById("diagram-svg");
    if (!panel) return;
    if (!(query || "").trim()) {
      panel.querySelectorAll(".uv-selected").forEach((n) => n.classList.remove("uv-selected"));
      return;
    }
    const first = document.querySelector("#block_table [role=row] [role=gridcell]");
    if (first) highlight(panel, first.textContent.trim(), true);
  };

  function selectRow(name, retry) {
    const table = document.querySelector("#block_table");
    if (!table) return;
    // gradio's table is virtual: rows are div[role=row], only the visible ones exist
    const cell = [...table.querySelectorAll("[role=row]")]
      .map((r) => r.querySelector("[role=gridcell]"))
      .find((c) => c && c.textContent.trim() === name);
    if (cell) {
      cell.scrollIntoView({ block: "nearest" });
      for (const t of ["pointerdown", "mousedown", "pointerup", "mouseup", "click"]) {
        cell.dispatchEvent(new MouseEvent(t, { bubbles: true, cancelable: true, view: window }));
      }
      return;
    }
    if (retry) return;
    const box = document.querySelector("#block_search textarea, #block_search input");
    if (!box) return;
    box.value = name;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
    setTimeout(() => selectRow(name, true), 800);
  }

  // every diagram panel on the page, whichever component it is in and however often gradio
  // re-mounts or patches it
  function bind() {
    document.querySelectorAll(".unetviz-diagram").forEach((box) => {
      try {
        bindNow(box);
      } catch (e) {
        // a drawing caught half-patched by gradio: try again once it has settled
        console.error("unetviz diagram: " + e);
        setTimeout(bind, 200);
      }
    });
  }

  function bindNow(box) {
    let { panel, svg } = parts(box);
    if (!svg || svg.querySelector(":scope > g.svg-pan-zoom_viewport")) return; // none, or bound
    if (!window.svgPanZoom) {
      setTimeout(bind, 50);
      return;
    }
    if (!panel.clientWidth) {
      // drawn inside a hidden tab: boxes measure 0 there; bind once the panel is shown
      if (!panel.__uvWait) {
        panel.__uvWait = new ResizeObserver(() => {
          if (!panel.clientWidth) return;
          panel.__uvWait.disconnect();
          panel.__uvWait = null;
          bind();
        });
        panel.__uvWait.observe(panel);
      }
      return;
    }
    const old = state[panel.id];
    if (old && old.pz) {
      try {
        old.pz.destroy();
      } catch (e) {
        /* its viewport went with the old drawing */
      }
    }
    if (svg.dataset.uvBound) {
      // the <svg> gradio kept still carries the old instance's listeners, and svg-pan-zoom
      // hands back an element's existing instance: bind a fresh copy of the new drawing
      const fresh = svg.cloneNode(true);
      svg.replaceWith(fresh);
      svg = fresh;
    }
    svg.dataset.uvBound = "1";
    moveTitleAndLegend(box, svg);
    // "fit" fits the viewBox: make it the drawing's own box (graphviz's spans the whole canvas,
    // title and legend included)
    const g0 = svg.querySelector("g.graph");
    const bb = g0.getBBox();
    const m = g0.transform.baseVal.consolidate();
    const t = m ? m.matrix : { a: 1, d: 1, e: 0, f: 0 };
    const pad = 8;
    svg.setAttribute(
      "viewBox",
      `${bb.x * t.a + t.e - pad} ${bb.y * t.d + t.f - pad} ${bb.width * t.a + 2 * pad} ${bb.height * t.d + 2 * pad}`,
    );
    svg.setAttribute("width", "100%");
    svg.setAttribute("height", "100%");
    const pz = window.svgPanZoom(svg, {
      fit: true,
      center: true,
      minZoom: 0.05,
      maxZoom: 50,
      zoomScaleSensitivity: 0.25,
      dblClickZoomEnabled: false,
      controlIconsEnabled: false,
    });
    const drawn = (old ? old.drawn : 0) + 1;
    state[panel.id] = { svg, pz, drawn };
    svg.dataset.uvFitZoom = String(pz.getSizes().realZoom);
    // fitted again once the page around it has settled; only then is it marked ready (a
    // zoom before that would be undone by this fit)
    setTimeout(() => {
      try {
        fit(panel);
      } finally {
        svg.dataset.uvReady = String(drawn);
        panel.dataset.uvDrawn = String(drawn);
      }
    }, 250);
  }

  function fit(panel) {
    const st = state[panel.id];
    if (!st || !st.svg.isConnected) return;
    st.pz.resize();
    st.pz.fit();
    st.pz.center();
  }

  // bound once per page, on the document: every panel and every drawing it will show uses them
  if (!window.__uvDelegated) {
    window.__uvDelegated = true;
    let down = null;
    document.addEventListener("mousedown", (e) => (down = [e.clientX, e.clientY]));
    document.addEventListener("click", (e) => {
      const box = e.target.closest && e.target.closest(".unetviz-diagram");
      if (!box) return;
      const { panel, svg } = parts(box);
      if (!panel) return;
      const st = state[panel.id];
      const tool = e.target.closest(".uv-fit, .uv-in, .uv-out");
      if (tool) {
        if (!st) return;
        if (tool.classList.contains("uv-fit")) fit(panel);
        else if (tool.classList.contains("uv-in")) st.pz.zoomIn();
        else st.pz.zoomOut();
        return;
      }
      if (!svg || !svg.contains(e.target)) return;
      if (down && Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 4) return;
      const g = e.target.closest("g.node, g.cluster");
      const name = g && nameOf(g);
      if (!name || name === "legend") return;
      e.preventDefault();
      highlight(panel, name, false);
      if (panel.id === "diagram-svg") selectRow(name, false);
    });
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        bind();
      });
    }).observe(document.body, { childList: true, subtree: true });
  }

  if (!window.__uvTableHooked) {
    window.__uvTableHooked = true;
    document.addEventListener(
      "click",
      (e) => {
        const cell = e.target.closest && e.target.closest("#block_table [role=gridcell]");
        const row = cell && cell.closest("[role=row]");
        if (!row) return;
        const first = row.querySelector("[role=gridcell]");
        if (first) window.__uvHighlight(first.textContent.trim());
      },
      true,
    ); // capture: the table's own handlers may stop the click
  }
  bind();
})(element);
