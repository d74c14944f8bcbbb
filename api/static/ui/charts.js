// Drawing of a custom dashboard's charts (window.TiercelCharts.draw): TimeSeries with uPlot,
// Bar and Pie as SVG, KPI as a big number, Markdown rendered from a small subset into DOM
// nodes (never as HTML), Table with sortable headers and the chart route's paging. Every chart
// but Markdown and Table also gets a "Show data" table: the accessible form of the figure.
(function () {
  "use strict";
  const { el } = window.Tiercel;
  const SVG = "http://www.w3.org/2000/svg";
  // Ten hues told apart in both themes; a series named after a state takes the state's colour.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#8c8c8c"];
  const STATES = { SUCCESS: "--s-success", FAILED: "--s-failed", RUNNING: "--s-running", WARNING: "--s-warning",
    KILLED: "--s-killed", PAUSED: "--s-paused", CREATED: "--s-created" };
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const colourOf = (name, i) => (STATES[name] && cssVar(STATES[name])) || PALETTE[i % PALETTE.length];

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) if (value !== null && value !== undefined) node.setAttribute(key, value);
    for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    return node;
  }

  const number = (v) => (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString() : v.toLocaleString(undefined, { maximumFractionDigits: 3 })) : String(v ?? "—"));
  const text = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
  // A category or cell as a reader wants it: the route's ISO-8601 dates in local time.
  const shown = (v) => (typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v) ? window.Tiercel.when(v) : text(v));

  // The chart's columns split into dimensions (grouped by) and aggregations (the figures).
  function columnsOf(chart, rows) {
    const declared = chart.data?.columns && !("field" in chart.data.columns || "agg" in chart.data.columns) ? chart.data.columns : {};
    const names = Object.keys(declared).length ? Object.keys(declared) : Object.keys(rows[0] || {});
    const label = (name) => declared[name]?.displayName || name;
    const aggs = names.filter((n) => declared[n]?.agg || (!declared[n] && typeof rows[0]?.[n] === "number"));
    const dims = names.filter((n) => !aggs.includes(n));
    return { names, label, aggs, dims, style: (n) => declared[n]?.graphStyle };
  }

  // The series a TimeSeries or Bar shows: one per aggregation, times one per value of the
  // chart's colour column when it names one.
  function seriesOf(chart, rows, cols) {
    const x = chart.chartOptions?.column || cols.dims[0];
    const group = chart.chartOptions?.colorByColumn || cols.dims.find((d) => d !== x);
    const groups = group ? [...new Set(rows.map((r) => text(r[group])))].sort() : [null];
    const series = [];
    for (const agg of cols.aggs) {
      for (const g of groups) {
        const name = g === null ? cols.label(agg) : cols.aggs.length > 1 ? `${cols.label(agg)}: ${g}` : g;
        series.push({ agg, group: g, name });
      }
    }
    return { x, group, series };
  }

  function legend(items) {
    return el("ul", { class: "legend chart-legend" }, items.map((item) => el("li", {},
      el("span", { class: "swatch", style: `background:${item.colour}` }), item.text)));
  }

  // --- TimeSeries ------------------------------------------------------------------------------

  function timeSeries(chart, answer, cols) {
    const rows = answer.results || [];
    const { x, group, series } = seriesOf(chart, rows, cols);
    const times = [...new Set(rows.map((r) => Date.parse(r[x])).filter((t) => !isNaN(t)))].sort((a, b) => a - b);
    const box = el("div", { class: "timeseries", "data-series": String(series.length), role: "img",
      "aria-label": `${chart.chartOptions?.displayName || chart.id}: ${series.map((s) => s.name).join(", ")} over time` });
    if (!window.uPlot) return box;
    const index = new Map(times.map((t, i) => [t, i]));
    const data = [times.map((t) => t / 1000), ...series.map((s) => {
      const values = times.map(() => null);
      for (const r of rows) {
        if (group && text(r[group]) !== s.group) continue;
        const i = index.get(Date.parse(r[x]));
        if (i !== undefined) values[i] = (values[i] ?? 0) + (Number(r[s.agg]) || 0);
      }
      return values;
    })];
    const bars = window.uPlot.paths?.bars ? window.uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
    const axis = { stroke: cssVar("--muted"), grid: { stroke: "rgba(128,128,128,.15)" } };
    // The x axis spans the range the route answered for, not only the buckets it holds: one
    // bucket alone would leave uPlot to guess a span of years.
    const [from, to] = [Date.parse(answer.startDate) / 1000, Date.parse(answer.endDate) / 1000];
    const span = !isNaN(from) && !isNaN(to) && to > from ? { range: () => [Math.min(from, data[0][0] ?? from), Math.max(to, data[0].at(-1) ?? to)] } : {};
    const options = {
      width: 480, height: 240, axes: [axis, { ...axis, size: 60 }], scales: { x: { time: true, ...span }, y: { range: (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.1 : 1] } },
      series: [{ label: "Time" }, ...series.map((s, i) => {
        const c = colourOf(s.group ?? s.name, i);
        const asBars = cols.style(s.agg) === "BARS" && bars;
        return { label: s.name, stroke: c, width: 2, fill: asBars ? c : undefined, paths: asBars ? bars : undefined,
          points: { show: cols.style(s.agg) === "POINTS" || times.length < 30 } };
      })],
    };
    // The box is measured once it is in the page; uPlot draws into it then.
    requestAnimationFrame(() => {
      options.width = Math.max(280, box.clientWidth || 480);
      box.plot = new window.uPlot(options, data, box);
      // The plot follows its box's width (a narrower window, a phone turned).
      let width = options.width;
      new ResizeObserver(() => {
        const now = Math.max(280, box.clientWidth || width);
        if (Math.abs(now - width) > 4) { width = now; box.plot.setSize({ width, height: options.height }); }
      }).observe(box);
    });
    return box;
  }

  // --- Bar -------------------------------------------------------------------------------------

  function bar(chart, rows, cols) {
    const { x, group, series } = seriesOf(chart, rows, cols);
    const categories = [...new Set(rows.map((r) => text(r[x])))];
    const value = (cat, s) => rows.filter((r) => text(r[x]) === cat && (!group || text(r[group]) === s.group))
      .reduce((sum, r) => sum + (Number(r[s.agg]) || 0), 0);
    const top = Math.max(0, ...categories.flatMap((c) => series.map((s) => value(c, s)))) || 1;
    const barH = 16, gap = 10, labelW = 140, width = 520, plotW = width - labelW - 70;
    const rowH = series.length * barH + gap;
    const node = svg("svg", { class: "bar-chart", viewBox: `0 0 ${width} ${categories.length * rowH + 4}`, role: "img",
      "aria-label": `${chart.chartOptions?.displayName || chart.id}: ${categories.length} categories` });
    categories.forEach((cat, ci) => {
      const y0 = ci * rowH;
      const name = shown(cat);
      node.append(svg("text", { x: labelW - 6, y: y0 + (series.length * barH) / 2 + 4, "text-anchor": "end", class: "bar-label" },
        name.length > 22 ? name.slice(0, 21) + "…" : name, svg("title", {}, name)));
      series.forEach((s, si) => {
        const v = value(cat, s);
        const w = Math.max(v > 0 ? 1 : 0, (v / top) * plotW);
        const y = y0 + si * barH;
        node.append(svg("rect", { class: "bar", x: labelW, y: y + 1, width: w, height: barH - 2, fill: colourOf(s.group ?? s.name, si),
          "data-category": cat, "data-series": s.name, "data-value": String(v) }, svg("title", {}, `${name}, ${s.name}: ${number(v)}`)));
        node.append(svg("text", { x: labelW + w + 4, y: y + barH - 4, class: "bar-value" }, number(v)));
      });
    });
    const box = el("div", { class: "bar-box", "data-bars": String(categories.length * series.length) }, node);
    if (series.length > 1) box.append(legend(series.map((s, i) => ({ colour: colourOf(s.group ?? s.name, i), text: s.name }))));
    return box;
  }

  // --- Pie -------------------------------------------------------------------------------------

  function pie(chart, rows, cols) {
    const x = chart.chartOptions?.column || cols.dims[0];
    const agg = cols.aggs[0];
    const totals = new Map();
    for (const r of rows) totals.set(text(r[x]), (totals.get(text(r[x])) || 0) + (Number(r[agg]) || 0));
    const slices = [...totals].filter(([, v]) => v > 0);
    const sum = slices.reduce((a, [, v]) => a + v, 0);
    const share = (v) => `${((100 * v) / (sum || 1)).toFixed(1)} %`;
    const title = chart.chartOptions?.displayName || chart.id;
    const node = svg("svg", { class: "pie-chart", viewBox: "-1.05 -1.05 2.1 2.1", role: "img",
      "aria-label": `${title}: ${slices.map(([k, v]) => `${shown(k)} ${number(v)} (${share(v)})`).join(", ")}` });
    let angle = -Math.PI / 2;
    slices.forEach(([name, v], i) => {
      const colour = colourOf(name, i);
      const label = svg("title", {}, `${shown(name)}: ${number(v)} (${share(v)})`);
      if (slices.length === 1) {
        node.append(svg("circle", { class: "slice", r: 1, fill: colour, "data-name": name }, label));
        return;
      }
      const sweep = (2 * Math.PI * v) / sum;
      const [x1, y1] = [Math.cos(angle), Math.sin(angle)];
      angle += sweep;
      const [x2, y2] = [Math.cos(angle), Math.sin(angle)];
      node.append(svg("path", { class: "slice", fill: colour, "data-name": name,
        d: `M0 0 L${x1} ${y1} A1 1 0 ${sweep > Math.PI ? 1 : 0} 1 ${x2} ${y2} Z` }, label));
    });
    return el("div", { class: "pie-box", "data-slices": String(slices.length) }, node,
      legend(slices.map(([name, v], i) => ({ colour: colourOf(name, i), text: `${shown(name)}: ${number(v)} (${share(v)})` }))));
  }

  // --- KPI -------------------------------------------------------------------------------------

  function kpi(chart, rows) {
    const r = rows[0] || {};
    const percentage = chart.chartOptions?.numberType === "PERCENTAGE";
    const value = r.value === null || r.value === undefined ? "—"
      : percentage ? `${Number(r.value).toFixed(1)} %` : number(r.value);
    const detail = r.numerator !== undefined && r.numerator !== null && r.total !== undefined
      ? `${number(r.numerator)} of ${number(r.total)}` : r.total !== undefined ? `of ${number(r.total)} rows` : "";
    return el("div", { class: "kpi chart-kpi" },
      el("div", { class: "hint" }, chart.chartOptions?.displayName || chart.id),
      el("div", { class: "value" }, value),
      detail ? el("div", { class: "hint" }, detail) : null);
  }

  // --- Markdown --------------------------------------------------------------------------------

  // A link keeps only web, mail and same-site addresses: `javascript:` and its kin never reach
  // an href.
  const safeHref = (url) => (/^(https?:|mailto:|\/|#)/i.test(url.trim()) ? url.trim() : null);

  // Inline marks: `code`, **strong**, *em* / _em_, [text](url). Everything else is text.
  function inline(source) {
    const out = [];
    const pattern = /`([^`]+)`|\*\*(.+?)\*\*|__(.+?)__|\*([^*]+)\*|_([^_]+)_|\[([^\]]+)\]\(([^)\s]+)\)/g;
    let last = 0, m;
    while ((m = pattern.exec(source))) {
      if (m.index > last) out.push(source.slice(last, m.index));
      if (m[1] !== undefined) out.push(el("code", {}, m[1]));
      else if (m[2] !== undefined || m[3] !== undefined) out.push(el("strong", {}, inline(m[2] ?? m[3])));
      else if (m[4] !== undefined || m[5] !== undefined) out.push(el("em", {}, inline(m[4] ?? m[5])));
      else {
        const href = safeHref(m[7]);
        out.push(href ? el("a", { href, rel: "noopener noreferrer" }, inline(m[6])) : m[0]);
      }
      last = pattern.lastIndex;
    }
    if (last < source.length) out.push(source.slice(last));
    return out;
  }

  // Headings, paragraphs, bullet and numbered lists, fenced code and rules, built as DOM nodes
  // whose text is set as text: HTML in the source shows as written.
  function markdown(source) {
    const root = el("div", { class: "markdown" });
    const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    let paragraph = [], list = null;
    const flush = () => {
      if (paragraph.length) root.append(el("p", {}, inline(paragraph.join(" "))));
      paragraph = [];
      list = null;
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if (/^```/.test(line)) {
        flush();
        const code = [];
        for (i++; i < lines.length && !/^```/.test(lines[i]); i++) code.push(lines[i]);
        root.append(el("pre", {}, el("code", {}, code.join("\n"))));
      } else if ((m = /^(#{1,4})\s+(.*)$/.exec(line))) {
        flush();
        root.append(el(`h${Math.min(6, m[1].length + 3)}`, {}, inline(m[2])));
      } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
        flush();
        root.append(el("hr"));
      } else if ((m = /^\s*([-*+]|\d+[.)])\s+(.*)$/.exec(line))) {
        if (paragraph.length) { root.append(el("p", {}, inline(paragraph.join(" ")))); paragraph = []; }
        const tag = /\d/.test(m[1]) ? "ol" : "ul";
        if (!list || list.tagName.toLowerCase() !== tag) { list = el(tag); root.append(list); }
        list.append(el("li", {}, inline(m[2])));
      } else if (!line.trim()) {
        flush();
      } else {
        list = null;
        paragraph.push(line.trim());
      }
    }
    flush();
    return root;
  }

  // --- tables ----------------------------------------------------------------------------------

  function dataTable(rows, cols, caption) {
    const names = cols.names.length ? cols.names : Object.keys(rows[0] || {});
    return el("div", { class: "scroll" }, el("table", { class: "compact chart-data" },
      caption ? el("caption", { class: "visually-hidden" }, caption) : null,
      el("thead", {}, el("tr", {}, names.map((c) => el("th", { scope: "col" }, cols.label(c))))),
      el("tbody", {}, rows.map((r) => el("tr", {}, names.map((c) => el("td", { class: cols.aggs.includes(c) ? "num" : null },
        cols.aggs.includes(c) ? number(r[c]) : shown(r[c]))))))));
  }

  // A Table chart: headers sort the page shown (the route has no order of its own but the
  // chart's orderBy), and Previous / Next ask the route for another page.
  function table(chart, answer, cols, pager) {
    const rows = answer.results || [];
    const box = el("div", { class: "table-chart" });
    let sortBy = null, descending = false;
    const render = () => {
      const names = cols.names.length ? cols.names : Object.keys(rows[0] || {});
      const sorted = sortBy === null ? rows : [...rows].sort((a, b) => {
        const [x, y] = [a[sortBy], b[sortBy]];
        const order = typeof x === "number" && typeof y === "number" ? x - y : text(x).localeCompare(text(y), undefined, { numeric: true });
        return descending ? -order : order;
      });
      const header = (c) => el("th", { scope: "col", "aria-sort": sortBy === c ? (descending ? "descending" : "ascending") : "none" },
        el("button", { type: "button", class: "sort", onclick: () => {
          descending = sortBy === c ? !descending : false;
          sortBy = c;
          render();
        } }, cols.label(c), sortBy === c ? (descending ? " ▼" : " ▲") : ""));
      const pages = Math.max(1, Math.ceil((answer.total ?? rows.length) / pager.size));
      box.replaceChildren(...[
        el("div", { class: "scroll" }, el("table", { class: "compact chart-data" },
          el("thead", {}, el("tr", {}, names.map(header))),
          el("tbody", {}, sorted.map((r) => el("tr", {}, names.map((c) => el("td", {}, typeof r[c] === "number" ? number(r[c]) : shown(r[c])))))))),
        rows.length ? null : el("p", { class: "hint" }, "No row in this range."),
        el("div", { class: "pager" },
          el("button", { type: "button", disabled: pager.page <= 1, onclick: () => pager.go(pager.page - 1) }, "Previous"),
          el("span", { class: "hint page-of" }, `Page ${pager.page} of ${pages} (${number(answer.total ?? rows.length)} rows)`),
          el("button", { type: "button", disabled: pager.page >= pages, onclick: () => pager.go(pager.page + 1) }, "Next")),
      ].filter(Boolean));
    };
    render();
    return box;
  }

  // --- entry point -----------------------------------------------------------------------------

  /** The chart's figure (and its "Show data" table) for a chart route's answer. `pager`
   *  ({page, size, go(page)}) pages a Table chart. */
  function draw(chart, answer, pager) {
    const type = (chart.type || "").split(".").pop();
    const rows = answer.results || [];
    if (type === "Markdown") return markdown(rows[0]?.content ?? rows[0]?.description ?? chart.content ?? "");
    const cols = columnsOf(chart, rows);
    if (type === "Table") return table(chart, answer, cols, pager);
    if (type === "KPI") {
      return el("div", {}, kpi(chart, rows), el("details", { class: "show-data" }, el("summary", {}, "Show data"),
        dataTable(rows, { names: ["value", "numerator", "total"].filter((k) => k in (rows[0] || {})), label: (n) => n, aggs: ["value", "numerator", "total"] }, chart.id)));
    }
    if (!rows.length) return el("p", { class: "hint" }, "No row in this range.");
    if (!cols.aggs.length) return dataTable(rows, cols);
    const figure = type === "TimeSeries" ? timeSeries(chart, answer, cols) : type === "Pie" ? pie(chart, rows, cols) : bar(chart, rows, cols);
    return el("div", {}, figure, el("details", { class: "show-data" }, el("summary", {}, "Show data"),
      dataTable(rows, cols, `${chart.chartOptions?.displayName || chart.id} as a table`)));
  }

  window.TiercelCharts = { draw, markdown };
})();
