import assert from "node:assert/strict";
import { describe, it } from "node:test";

import type { WAMessage } from "baileys";

import { buildParts, mapInbound, toJid, type MapContext } from "../src/whatsapp.js";
import { PNG, dmText } from "./helpers.js";

const me = { phone_jid: "491700000001@s.whatsapp.net", lid_jid: "170000000000001@lid" };

function ctx(over: Partial<MapContext> = {}): MapContext & { downloads: string[] } {
  const downloads: string[] = [];
  return {
    me,
    groupMode: "mention",
    maxMediaBytes: 1000,
    download: async (m) => {
      downloads.push(m.key.id ?? "");
      return PNG;
    },
    phoneForLid: async () => null,
    downloads,
    ...over,
  };
}

const wa = (m: unknown) => m as WAMessage;

function groupText(id: string, text: string, contextInfo?: object, participant = "251100000000002@lid", participantAlt?: string) {
  return wa({
    key: { remoteJid: "120363012345678901@g.us", participant, participantAlt, id, fromMe: false },
    message: contextInfo ? { extendedTextMessage: { text, contextInfo } } : { conversation: text },
    pushName: "Bob",
    messageTimestamp: 1760000010,
  });
}

describe("inbound mapping", () => {
  it("a direct text becomes a message with the sender's phone JID, name and time", async () => {
    const m = await mapInbound(wa(dmText("ID1", "hello", "491511234567:3@s.whatsapp.net")), ctx());
    assert.deepEqual(m, {
      type: "message",
      id: "ID1",
      chat_id: "491511234567:3@s.whatsapp.net",
      is_group: false,
      sender: { phone_jid: "491511234567@s.whatsapp.net", lid_jid: null, name: "Alice" },
      text: "hello",
      timestamp_ms: 1760000000000,
      reply_to: null,
      mentions_me: false,
      media: null,
      media_error: null,
    });
  });

  it("a message addressed by LID carries both ids, from the alt JID or the LID mapping", async () => {
    const viaAlt = await mapInbound(wa(dmText("ID2", "hi", "251100000000001@lid", "491511234567@s.whatsapp.net")), ctx());
    assert.deepEqual(viaAlt?.sender, { phone_jid: "491511234567@s.whatsapp.net", lid_jid: "251100000000001@lid", name: "Alice" });
    assert.equal(viaAlt?.chat_id, "251100000000001@lid", "replies go where the message came from");

    const viaMapping = await mapInbound(
      wa(dmText("ID3", "hi", "251100000000001@lid")),
      ctx({ phoneForLid: async (lid) => (lid === "251100000000001@lid" ? "491511234567:2@s.whatsapp.net" : null) }),
    );
    assert.deepEqual(viaMapping?.sender, viaAlt?.sender);

    const lidOnly = await mapInbound(wa(dmText("ID4", "hi", "251100000000001@lid")), ctx());
    assert.deepEqual(lidOnly?.sender, { phone_jid: null, lid_jid: "251100000000001@lid", name: "Alice" });
  });

  it("an image with a caption is downloaded and sent base64 with mime, file name and caption", async () => {
    const c = ctx();
    const m = await mapInbound(
      wa({
        key: { remoteJid: "491511234567@s.whatsapp.net", id: "IMG1", fromMe: false },
        message: { imageMessage: { mimetype: "image/png", caption: "what is this?", fileLength: PNG.length } },
        messageTimestamp: 1760000005,
      }),
      c,
    );
    assert.deepEqual(c.downloads, ["IMG1"]);
    assert.equal(m?.text, "what is this?");
    assert.deepEqual(m?.media, {
      kind: "image",
      mime_type: "image/png",
      file_name: "IMG1.png",
      caption: "what is this?",
      size_bytes: PNG.length,
      data_base64: PNG.toString("base64"),
    });
    assert.equal(m?.media_error, null);
  });

  it("documents keep their file name, and wrapped (ephemeral) messages are unwrapped", async () => {
    const m = await mapInbound(
      wa({
        key: { remoteJid: "491511234567@s.whatsapp.net", id: "DOC1", fromMe: false },
        message: { ephemeralMessage: { message: { documentMessage: { mimetype: "application/pdf", fileName: "plan.pdf" } } } },
        messageTimestamp: 1,
      }),
      ctx(),
    );
    assert.equal(m?.media?.kind, "document");
    assert.equal(m?.media?.file_name, "plan.pdf");
    assert.equal(m?.text, "");
  });

  it("media that is too large or cannot be downloaded is reported, and the text still goes", async () => {
    const big = await mapInbound(
      wa({
        key: { remoteJid: "491511234567@s.whatsapp.net", id: "VID1", fromMe: false },
        message: { videoMessage: { mimetype: "video/mp4", caption: "look", fileLength: 5000 } },
        messageTimestamp: 1,
      }),
      ctx(),
    );
    assert.equal(big?.media, null);
    assert.match(big?.media_error ?? "", /larger than BRIDGE_MAX_MEDIA_BYTES/);
    assert.equal(big?.text, "look");

    const gone = await mapInbound(
      wa({ key: { remoteJid: "491511234567@s.whatsapp.net", id: "AUD1", fromMe: false }, message: { audioMessage: { mimetype: "audio/ogg" } } }),
      ctx({
        download: async () => {
          throw new Error("404 from the media server");
        },
      }),
    );
    assert.match(gone?.media_error ?? "", /download failed: 404/);
  });

  it("group messages are forwarded only when the bot is mentioned or replied to", async () => {
    assert.equal(await mapInbound(groupText("G1", "chatter"), ctx()), null);

    const mentionedByLid = await mapInbound(groupText("G2", "@170000000000001 help", { mentionedJid: ["170000000000001@lid"] }), ctx());
    assert.equal(mentionedByLid?.mentions_me, true);
    assert.equal(mentionedByLid?.is_group, true);
    assert.equal(mentionedByLid?.chat_id, "120363012345678901@g.us");

    const mentionedByPhone = await mapInbound(groupText("G3", "hey", { mentionedJid: ["491700000001@s.whatsapp.net"] }), ctx());
    assert.equal(mentionedByPhone?.mentions_me, true);

    const otherMention = await mapInbound(groupText("G4", "hey", { mentionedJid: ["491799999999@s.whatsapp.net"] }), ctx());
    assert.equal(otherMention, null);

    const replyToBot = await mapInbound(groupText("G5", "and then?", { stanzaId: "BOTMSG", participant: "170000000000001:7@lid" }), ctx());
    assert.deepEqual(replyToBot?.reply_to, { id: "BOTMSG", sender_jid: "170000000000001:7@lid", from_me: true });

    const replyToOther = await mapInbound(groupText("G6", "and then?", { stanzaId: "X", participant: "251100000000009@lid" }), ctx());
    assert.equal(replyToOther, null);

    assert.ok(await mapInbound(groupText("G7", "chatter"), ctx({ groupMode: "all" })));
    assert.equal(await mapInbound(groupText("G8", "@me", { mentionedJid: [me.lid_jid] }), ctx({ groupMode: "off" })), null);
  });

  it("group senders carry both ids from participant and participantAlt", async () => {
    const m = await mapInbound(
      groupText("G9", "hi", { mentionedJid: [me.phone_jid] }, "251100000000002@lid", "491522222222@s.whatsapp.net"),
      ctx(),
    );
    assert.deepEqual(m?.sender, { phone_jid: "491522222222@s.whatsapp.net", lid_jid: "251100000000002@lid", name: "Bob" });
  });

  it("own messages, status broadcasts and empty messages are not forwarded", async () => {
    const own = wa({ key: { remoteJid: "491511234567@s.whatsapp.net", id: "O1", fromMe: true }, message: { conversation: "x" } });
    const status = wa({ key: { remoteJid: "status@broadcast", participant: "491511234567@s.whatsapp.net", id: "S1" }, message: { conversation: "x" } });
    const reaction = wa({ key: { remoteJid: "491511234567@s.whatsapp.net", id: "R1" }, message: { reactionMessage: { text: "👍" } } });
    for (const m of [own, status, reaction]) assert.equal(await mapInbound(m, ctx()), null);
  });
});

describe("outbound mapping", () => {
  it("text becomes the caption of the first image; audio takes none", () => {
    const img = PNG.toString("base64");
    const parts = buildParts({
      type: "send",
      id: "r1",
      chat_id: "x@s.whatsapp.net",
      text: "here you go",
      media: [
        { kind: "audio", mime_type: "audio/ogg", data_base64: img },
        { kind: "image", mime_type: "image/png", data_base64: img },
        { kind: "document", mime_type: "application/pdf", file_name: "a.pdf", caption: "doc", data_base64: img },
      ],
    }) as Record<string, unknown>[];
    assert.equal(parts.length, 3);
    assert.ok(Buffer.isBuffer(parts[0].audio));
    assert.equal(parts[1].caption, "here you go");
    assert.deepEqual(parts[1].image, PNG);
    assert.equal(parts[2].fileName, "a.pdf");
    assert.equal(parts[2].caption, "doc");

    const textFirst = buildParts({
      type: "send",
      id: "r2",
      chat_id: "x@s.whatsapp.net",
      text: "see audio",
      media: [{ kind: "audio", mime_type: "audio/ogg", data_base64: img }],
    }) as Record<string, unknown>[];
    assert.deepEqual(textFirst[0], { text: "see audio" });
  });

  it("chat ids are JIDs or phone numbers", () => {
    assert.equal(toJid("+491511234567"), "491511234567@s.whatsapp.net");
    assert.equal(toJid("120363012345678901@g.us"), "120363012345678901@g.us");
    assert.throws(() => toJid("alice"), /neither a JID nor a phone number/);
  });
});
