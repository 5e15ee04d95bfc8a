-- 0028: case folding that does not depend on the database's locale, and the
-- flows' findings of a hostile test (2026-11-27).
-- Frozen copy of what sql/*.sql defines at this revision; never edit it.
--
-- * A client email is lower-cased by pyxp.lower_cased (new): ASCII, then a
--   fixed table of Unicode's simple lowercase (glibc C.UTF-8's lower() of
--   every letter). lower() followed the database's collation: in a C-locale
--   database ÉLODIE@… and élodie@… were two clients, under ICU tr-TR
--   ALICE@… became alıce@…; each was onboarded twice (+1000 XP twice).
--   Campaign types, votes and formula input names are upper-cased as ASCII
--   (under tr-TR 'individual' was PX003, 'valid' PX008, every param PX018).
--   audit() reads stored emails with the same folding.
-- * A client registration on a campaign an approval named another creator
--   for is refused (PX022); it takes the campaign's subject lock, as
--   approvals and creations do (an approval racing a registration paid +100
--   to one wallet and the registry named another: nobody could create it).
--   A registration by the wallet the client was onboarded with is PX021.
-- * An onboarding with nothing to grant writes nothing (it left a subject
--   lock's row).
-- * An INDIVIDUAL completion's submission and outcome name one MINT value
--   (PX011 otherwise: a refusal naming 0.01 took 0.005 back from a +5,000
--   submission). check_completion_owner takes the call's MINT value.
-- * A free mission's price 0 is no price: the same call with or without it
--   (a retry without it got PX010); a call recorded with 0 still replays.
-- * A batch event with a field pyxp does not read is refused (PX017): a
--   misspelt "params" or "context" was dropped.
-- * A client email's domain has no empty label (a@.b.c was accepted).
-- * A number out of range is shown in scientific notation past 40
--   characters in PX004's message (1e130000 made a 130 kB message).
--
-- Found by a second hostile test (the caller's transaction and session):
-- * No plain literal holds a backslash escape that reads otherwise under
--   standard_conforming_strings = off: '\.' read as '.' (client@nodot was
--   registered; a key's retry refused, PX016) and the partitions' bounds
--   read as NULL. '[.]' and '[(]' instead.
-- * READ UNCOMMITTED (READ COMMITTED in PostgreSQL) is accepted (PX025).
-- * A transaction sets pyxp.feed_wakeups = off to send no wake-up: PREPARE
--   TRANSACTION of one that notified is refused (0A000), and a notifying
--   commit waits for a cluster-wide lock (lock_timeout).
-- * A transaction left prepared in another database no longer holds the
--   feed back (pyxp.oldest_running_here reads pg_prepared_xacts).
-- * The ledger's append-only triggers and the guard's event triggers are
--   ENABLE ALWAYS: session_replication_role = replica (settable by a role
--   granted SET on it) skipped them, and DELETE went through.
--
-- Found by a third hostile test (the feed):
-- * A cursor ahead of the feed (its group past the snapshot's xmax) is
--   refused (PX023): one was accepted and the rows below it skipped for good.
-- * A transaction's batches and retroactive applications stop at 15,728,640
--   rows (pyxp.counted_transaction_rows, new: PX023), and changes() refuses
--   a group of more than 2^24 - 1 rows (pyxp.raised_feed_overflow, new:
--   PX031) rather than give its rows the next group's cursors.
--
-- Found by a fourth hostile test (of the above):
-- * In a database whose collation folded emails otherwise (LOCALE 'C', ICU),
--   what was stored before 0028 keeps its form: the flows find a
--   registration or an onboarding by it too (pyxp.email_before_0028, new: the
--   input's old reading, and the stored forms that read as it now, which this
--   migration lists in xp_email_forms_before_0028, new; a registered client's
--   sign-in found nothing, an onboarded client was paid again), a
--   registration of a client onboarded so is stored so, and audit() accepts
--   either form.
-- * The MINT check compares an INDIVIDUAL submission with its refusal only.
-- * A batch event whose key is claimed replays whatever fields it carries.
-- * pyxp.feed_wakeups takes PostgreSQL's boolean spellings (OFF, false, 0).

-- ALWAYS: the guard's event triggers fire under session_replication_role =
-- replica too (a superuser's: only a superuser migrating changes them).
DO $always$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger e WHERE e.evtname = 'pyxp_ledger_partitions_start') THEN
            ALTER EVENT TRIGGER pyxp_ledger_partitions_start ENABLE ALWAYS;
            ALTER EVENT TRIGGER pyxp_ledger_partitions_end ENABLE ALWAYS;
            ALTER EVENT TRIGGER pyxp_ledger_partitions_drop ENABLE ALWAYS;
        END IF;
    END IF;
END
$always$;

SET LOCAL ROLE pyxp_owner;

-- ALWAYS: the ledger's append-only triggers fire under
-- session_replication_role = replica too (the row trigger's setting
-- recurses to the partitions; each partition's TRUNCATE trigger is its own).
ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_append_only;
ALTER TABLE pyxp.xp_transactions ENABLE ALWAYS TRIGGER xp_transactions_no_truncate;
DO $always$
DECLARE
    v_partition regclass;
BEGIN
    FOR v_partition IN
        SELECT g.tgrelid::regclass
          FROM pg_catalog.pg_partition_tree('pyxp.xp_transactions') t
          JOIN pg_catalog.pg_trigger g ON g.tgrelid = t.relid AND g.tgname = 'xp_transactions_no_truncate'
         WHERE t.isleaf
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER xp_transactions_no_truncate', v_partition);
    END LOOP;
END
$always$;

-- Client emails stored before 0028 in a database whose collation read them
-- otherwise than pyxp.lower_cased does (filled at the end of this file).
CREATE TABLE pyxp.xp_email_forms_before_0028 (
    client_email text NOT NULL,  -- as read since 0028
    stored_form  text NOT NULL,  -- as stored before
    PRIMARY KEY (client_email, stored_form)
);
REVOKE ALL ON TABLE pyxp.xp_email_forms_before_0028 FROM PUBLIC;
GRANT SELECT ON TABLE pyxp.xp_email_forms_before_0028 TO pyxp_reader;

CREATE FUNCTION pyxp.lower_cased(p_text text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT CASE WHEN octet_length(p_text) = length(p_text) THEN lower(p_text COLLATE "C")  -- ASCII only (UTF8)
                ELSE translate(lower(p_text COLLATE "C"),
                               'ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻ'
                               || 'ĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽƁƂƄƆƇƉƊƋƎƏƐƑƓƔƖƗƘƜƝƟƠƢƤƦƧƩƬ'
                               || 'ƮƯƱƲƳƵƷƸƼǄǅǇǈǊǋǍǏǑǓǕǗǙǛǞǠǢǤǦǨǪǬǮǱǲǴǶǷǸǺǼǾȀȂȄȆȈȊȌȎȐȒȔȖȘȚȜȞȠȢȤ'
                               || 'ȦȨȪȬȮȰȲȺȻȽȾɁɃɄɅɆɈɊɌɎͰͲͶͿΆΈΉΊΌΎΏΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩΪΫϏϘϚ'
                               || 'ϜϞϠϢϤϦϨϪϬϮϴϷϹϺϽϾϿЀЁЂЃЄЅІЇЈЉЊЋЌЍЎЏАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪ'
                               || 'ЫЬЭЮЯѠѢѤѦѨѪѬѮѰѲѴѶѸѺѼѾҀҊҌҎҐҒҔҖҘҚҜҞҠҢҤҦҨҪҬҮҰҲҴҶҸҺҼҾӀӁӃӅӇӉӋӍӐӒӔ'
                               || 'ӖӘӚӜӞӠӢӤӦӨӪӬӮӰӲӴӶӸӺӼӾԀԂԄԆԈԊԌԎԐԒԔԖԘԚԜԞԠԢԤԦԨԪԬԮԱԲԳԴԵԶԷԸԹԺԻԼԽԾԿ'
                               || 'ՀՁՂՃՄՅՆՇՈՉՊՋՌՍՎՏՐՑՒՓՔՕՖႠႡႢႣႤႥႦႧႨႩႪႫႬႭႮႯႰႱႲႳႴႵႶႷႸႹႺႻႼႽႾႿჀჁჂჃჄ'
                               || 'ჅჇჍᎠᎡᎢᎣᎤᎥᎦᎧᎨᎩᎪᎫᎬᎭᎮᎯᎰᎱᎲᎳᎴᎵᎶᎷᎸᎹᎺᎻᎼᎽᎾᎿᏀᏁᏂᏃᏄᏅᏆᏇᏈᏉᏊᏋᏌᏍᏎᏏᏐᏑᏒᏓᏔᏕᏖᏗᏘ'
                               || 'ᏙᏚᏛᏜᏝᏞᏟᏠᏡᏢᏣᏤᏥᏦᏧᏨᏩᏪᏫᏬᏭᏮᏯᏰᏱᏲᏳᏴᏵᲐᲑᲒᲓᲔᲕᲖᲗᲘᲙᲚᲛᲜᲝᲞᲟᲠᲡᲢᲣᲤᲥᲦᲧᲨᲩᲪᲫᲬᲭᲮ'
                               || 'ᲯᲰᲱᲲᲳᲴᲵᲶᲷᲸᲹᲺᲽᲾᲿḀḂḄḆḈḊḌḎḐḒḔḖḘḚḜḞḠḢḤḦḨḪḬḮḰḲḴḶḸḺḼḾṀṂṄṆṈṊṌṎṐṒṔṖṘ'
                               || 'ṚṜṞṠṢṤṦṨṪṬṮṰṲṴṶṸṺṼṾẀẂẄẆẈẊẌẎẐẒẔẞẠẢẤẦẨẪẬẮẰẲẴẶẸẺẼẾỀỂỄỆỈỊỌỎỐỒỔỖỘ'
                               || 'ỚỜỞỠỢỤỦỨỪỬỮỰỲỴỶỸỺỼỾἈἉἊἋἌἍἎἏἘἙἚἛἜἝἨἩἪἫἬἭἮἯἸἹἺἻἼἽἾἿὈὉὊὋὌὍὙὛὝὟὨ'
                               || 'ὩὪὫὬὭὮὯᾈᾉᾊᾋᾌᾍᾎᾏᾘᾙᾚᾛᾜᾝᾞᾟᾨᾩᾪᾫᾬᾭᾮᾯᾸᾹᾺΆᾼῈΈῊΉῌῘῙῚΊῨῩῪΎῬῸΌῺΏῼΩKÅℲⅠ'
                               || 'ⅡⅢⅣⅤⅥⅦⅧⅨⅩⅪⅫⅬⅭⅮⅯↃⒶⒷⒸⒹⒺⒻⒼⒽⒾⒿⓀⓁⓂⓃⓄⓅⓆⓇⓈⓉⓊⓋⓌⓍⓎⓏⰀⰁⰂⰃⰄⰅⰆⰇⰈⰉⰊⰋⰌⰍⰎⰏⰐⰑ'
                               || 'ⰒⰓⰔⰕⰖⰗⰘⰙⰚⰛⰜⰝⰞⰟⰠⰡⰢⰣⰤⰥⰦⰧⰨⰩⰪⰫⰬⰭⰮⰯⱠⱢⱣⱤⱧⱩⱫⱭⱮⱯⱰⱲⱵⱾⱿⲀⲂⲄⲆⲈⲊⲌⲎⲐⲒⲔⲖⲘⲚⲜ'
                               || 'ⲞⲠⲢⲤⲦⲨⲪⲬⲮⲰⲲⲴⲶⲸⲺⲼⲾⳀⳂⳄⳆⳈⳊⳌⳎⳐⳒⳔⳖⳘⳚⳜⳞⳠⳢⳫⳭⳲꙀꙂꙄꙆꙈꙊꙌꙎꙐꙒꙔꙖꙘꙚꙜꙞꙠꙢꙤꙦꙨꙪ'
                               || 'ꙬꚀꚂꚄꚆꚈꚊꚌꚎꚐꚒꚔꚖꚘꚚꜢꜤꜦꜨꜪꜬꜮꜲꜴꜶꜸꜺꜼꜾꝀꝂꝄꝆꝈꝊꝌꝎꝐꝒꝔꝖꝘꝚꝜꝞꝠꝢꝤꝦꝨꝪꝬꝮꝹꝻꝽꝾꞀꞂꞄ'
                               || 'ꞆꞋꞍꞐꞒꞖꞘꞚꞜꞞꞠꞢꞤꞦꞨꞪꞫꞬꞭꞮꞰꞱꞲꞳꞴꞶꞸꞺꞼꞾꟀꟂꟄꟅꟆꟇꟉꟐꟖꟘꟵＡＢＣＤＥＦＧＨＩＪＫＬＭＮＯＰＱＲＳ'
                               || 'ＴＵＶＷＸＹＺ𐐀𐐁𐐂𐐃𐐄𐐅𐐆𐐇𐐈𐐉𐐊𐐋𐐌𐐍𐐎𐐏𐐐𐐑𐐒𐐓𐐔𐐕𐐖𐐗𐐘𐐙𐐚𐐛𐐜𐐝𐐞𐐟𐐠𐐡𐐢𐐣𐐤𐐥𐐦𐐧𐒰𐒱𐒲𐒳𐒴𐒵𐒶𐒷𐒸𐒹𐒺𐒻𐒼'
                               || '𐒽𐒾𐒿𐓀𐓁𐓂𐓃𐓄𐓅𐓆𐓇𐓈𐓉𐓊𐓋𐓌𐓍𐓎𐓏𐓐𐓑𐓒𐓓𐕰𐕱𐕲𐕳𐕴𐕵𐕶𐕷𐕸𐕹𐕺𐕼𐕽𐕾𐕿𐖀𐖁𐖂𐖃𐖄𐖅𐖆𐖇𐖈𐖉𐖊𐖌𐖍𐖎𐖏𐖐𐖑𐖒𐖔𐖕𐲀𐲁'
                               || '𐲂𐲃𐲄𐲅𐲆𐲇𐲈𐲉𐲊𐲋𐲌𐲍𐲎𐲏𐲐𐲑𐲒𐲓𐲔𐲕𐲖𐲗𐲘𐲙𐲚𐲛𐲜𐲝𐲞𐲟𐲠𐲡𐲢𐲣𐲤𐲥𐲦𐲧𐲨𐲩𐲪𐲫𐲬𐲭𐲮𐲯𐲰𐲱𐲲𑢠𑢡𑢢𑢣𑢤𑢥𑢦𑢧𑢨𑢩𑢪'
                               || '𑢫𑢬𑢭𑢮𑢯𑢰𑢱𑢲𑢳𑢴𑢵𑢶𑢷𑢸𑢹𑢺𑢻𑢼𑢽𑢾𑢿𖹀𖹁𖹂𖹃𖹄𖹅𖹆𖹇𖹈𖹉𖹊𖹋𖹌𖹍𖹎𖹏𖹐𖹑𖹒𖹓𖹔𖹕𖹖𖹗𖹘𖹙𖹚𖹛𖹜𖹝𖹞𖹟𞤀𞤁𞤂𞤃𞤄𞤅𞤆'
                               || '𞤇𞤈𞤉𞤊𞤋𞤌𞤍𞤎𞤏𞤐𞤑𞤒𞤓𞤔𞤕𞤖𞤗𞤘𞤙𞤚𞤛𞤜𞤝𞤞𞤟𞤠𞤡',
                               'àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþāăąćĉċčďđēĕėęěĝğġģĥħĩīĭįiĳĵķĺļ'
                               || 'ľŀłńņňŋōŏőœŕŗřśŝşšţťŧũūŭůűųŵŷÿźżžɓƃƅɔƈɖɗƌǝəɛƒɠɣɩɨƙɯɲɵơƣƥʀƨʃƭ'
                               || 'ʈưʊʋƴƶʒƹƽǆǆǉǉǌǌǎǐǒǔǖǘǚǜǟǡǣǥǧǩǫǭǯǳǳǵƕƿǹǻǽǿȁȃȅȇȉȋȍȏȑȓȕȗșțȝȟƞȣȥ'
                               || 'ȧȩȫȭȯȱȳⱥȼƚⱦɂƀʉʌɇɉɋɍɏͱͳͷϳάέήίόύώαβγδεζηθικλμνξοπρστυφχψωϊϋϗϙϛ'
                               || 'ϝϟϡϣϥϧϩϫϭϯθϸϲϻͻͼͽѐёђѓєѕіїјљњћќѝўџабвгдежзийклмнопрстуфхцчшщъ'
                               || 'ыьэюяѡѣѥѧѩѫѭѯѱѳѵѷѹѻѽѿҁҋҍҏґғҕҗҙқҝҟҡңҥҧҩҫҭүұҳҵҷҹһҽҿӏӂӄӆӈӊӌӎӑӓӕ'
                               || 'ӗәӛӝӟӡӣӥӧөӫӭӯӱӳӵӷӹӻӽӿԁԃԅԇԉԋԍԏԑԓԕԗԙԛԝԟԡԣԥԧԩԫԭԯաբգդեզէըթժիլխծկ'
                               || 'հձղճմյնշոչպջռսվտրցւփքօֆⴀⴁⴂⴃⴄⴅⴆⴇⴈⴉⴊⴋⴌⴍⴎⴏⴐⴑⴒⴓⴔⴕⴖⴗⴘⴙⴚⴛⴜⴝⴞⴟⴠⴡⴢⴣⴤ'
                               || 'ⴥⴧⴭꭰꭱꭲꭳꭴꭵꭶꭷꭸꭹꭺꭻꭼꭽꭾꭿꮀꮁꮂꮃꮄꮅꮆꮇꮈꮉꮊꮋꮌꮍꮎꮏꮐꮑꮒꮓꮔꮕꮖꮗꮘꮙꮚꮛꮜꮝꮞꮟꮠꮡꮢꮣꮤꮥꮦꮧꮨ'
                               || 'ꮩꮪꮫꮬꮭꮮꮯꮰꮱꮲꮳꮴꮵꮶꮷꮸꮹꮺꮻꮼꮽꮾꮿᏸᏹᏺᏻᏼᏽაბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხ'
                               || 'ჯჰჱჲჳჴჵჶჷჸჹჺჽჾჿḁḃḅḇḉḋḍḏḑḓḕḗḙḛḝḟḡḣḥḧḩḫḭḯḱḳḵḷḹḻḽḿṁṃṅṇṉṋṍṏṑṓṕṗṙ'
                               || 'ṛṝṟṡṣṥṧṩṫṭṯṱṳṵṷṹṻṽṿẁẃẅẇẉẋẍẏẑẓẕßạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộ'
                               || 'ớờởỡợụủứừửữựỳỵỷỹỻỽỿἀἁἂἃἄἅἆἇἐἑἒἓἔἕἠἡἢἣἤἥἦἧἰἱἲἳἴἵἶἷὀὁὂὃὄὅὑὓὕὗὠ'
                               || 'ὡὢὣὤὥὦὧᾀᾁᾂᾃᾄᾅᾆᾇᾐᾑᾒᾓᾔᾕᾖᾗᾠᾡᾢᾣᾤᾥᾦᾧᾰᾱὰάᾳὲέὴήῃῐῑὶίῠῡὺύῥὸόὼώῳωkåⅎⅰ'
                               || 'ⅱⅲⅳⅴⅵⅶⅷⅸⅹⅺⅻⅼⅽⅾⅿↄⓐⓑⓒⓓⓔⓕⓖⓗⓘⓙⓚⓛⓜⓝⓞⓟⓠⓡⓢⓣⓤⓥⓦⓧⓨⓩⰰⰱⰲⰳⰴⰵⰶⰷⰸⰹⰺⰻⰼⰽⰾⰿⱀⱁ'
                               || 'ⱂⱃⱄⱅⱆⱇⱈⱉⱊⱋⱌⱍⱎⱏⱐⱑⱒⱓⱔⱕⱖⱗⱘⱙⱚⱛⱜⱝⱞⱟⱡɫᵽɽⱨⱪⱬɑɱɐɒⱳⱶȿɀⲁⲃⲅⲇⲉⲋⲍⲏⲑⲓⲕⲗⲙⲛⲝ'
                               || 'ⲟⲡⲣⲥⲧⲩⲫⲭⲯⲱⲳⲵⲷⲹⲻⲽⲿⳁⳃⳅⳇⳉⳋⳍⳏⳑⳓⳕⳗⳙⳛⳝⳟⳡⳣⳬⳮⳳꙁꙃꙅꙇꙉꙋꙍꙏꙑꙓꙕꙗꙙꙛꙝꙟꙡꙣꙥꙧꙩꙫ'
                               || 'ꙭꚁꚃꚅꚇꚉꚋꚍꚏꚑꚓꚕꚗꚙꚛꜣꜥꜧꜩꜫꜭꜯꜳꜵꜷꜹꜻꜽꜿꝁꝃꝅꝇꝉꝋꝍꝏꝑꝓꝕꝗꝙꝛꝝꝟꝡꝣꝥꝧꝩꝫꝭꝯꝺꝼᵹꝿꞁꞃꞅ'
                               || 'ꞇꞌɥꞑꞓꞗꞙꞛꞝꞟꞡꞣꞥꞧꞩɦɜɡɬɪʞʇʝꭓꞵꞷꞹꞻꞽꞿꟁꟃꞔʂᶎꟈꟊꟑꟗꟙꟶａｂｃｄｅｆｇｈｉｊｋｌｍｎｏｐｑｒｓ'
                               || 'ｔｕｖｗｘｙｚ𐐨𐐩𐐪𐐫𐐬𐐭𐐮𐐯𐐰𐐱𐐲𐐳𐐴𐐵𐐶𐐷𐐸𐐹𐐺𐐻𐐼𐐽𐐾𐐿𐑀𐑁𐑂𐑃𐑄𐑅𐑆𐑇𐑈𐑉𐑊𐑋𐑌𐑍𐑎𐑏𐓘𐓙𐓚𐓛𐓜𐓝𐓞𐓟𐓠𐓡𐓢𐓣𐓤'
                               || '𐓥𐓦𐓧𐓨𐓩𐓪𐓫𐓬𐓭𐓮𐓯𐓰𐓱𐓲𐓳𐓴𐓵𐓶𐓷𐓸𐓹𐓺𐓻𐖗𐖘𐖙𐖚𐖛𐖜𐖝𐖞𐖟𐖠𐖡𐖣𐖤𐖥𐖦𐖧𐖨𐖩𐖪𐖫𐖬𐖭𐖮𐖯𐖰𐖱𐖳𐖴𐖵𐖶𐖷𐖸𐖹𐖻𐖼𐳀𐳁'
                               || '𐳂𐳃𐳄𐳅𐳆𐳇𐳈𐳉𐳊𐳋𐳌𐳍𐳎𐳏𐳐𐳑𐳒𐳓𐳔𐳕𐳖𐳗𐳘𐳙𐳚𐳛𐳜𐳝𐳞𐳟𐳠𐳡𐳢𐳣𐳤𐳥𐳦𐳧𐳨𐳩𐳪𐳫𐳬𐳭𐳮𐳯𐳰𐳱𐳲𑣀𑣁𑣂𑣃𑣄𑣅𑣆𑣇𑣈𑣉𑣊'
                               || '𑣋𑣌𑣍𑣎𑣏𑣐𑣑𑣒𑣓𑣔𑣕𑣖𑣗𑣘𑣙𑣚𑣛𑣜𑣝𑣞𑣟𖹠𖹡𖹢𖹣𖹤𖹥𖹦𖹧𖹨𖹩𖹪𖹫𖹬𖹭𖹮𖹯𖹰𖹱𖹲𖹳𖹴𖹵𖹶𖹷𖹸𖹹𖹺𖹻𖹼𖹽𖹾𖹿𞤢𞤣𞤤𞤥𞤦𞤧𞤨'
                               || '𞤩𞤪𞤫𞤬𞤭𞤮𞤯𞤰𞤱𞤲𞤳𞤴𞤵𞤶𞤷𞤸𞤹𞤺𞤻𞤼𞤽𞤾𞤿𞥀𞥁𞥂𞥃') END
$$;

COMMENT ON FUNCTION pyxp.lower_cased(text) IS 'internal: a text lower-cased the same way whatever the database''s collation.';

REVOKE ALL ON FUNCTION pyxp.lower_cased(text) FROM PUBLIC;

CREATE FUNCTION pyxp.counted_transaction_rows(p_rows bigint)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_seen text := current_setting('pyxp.transaction_rows', true);
    v_rows bigint := CASE WHEN v_seen ~ '^[0-9]{1,15}$' THEN v_seen::bigint ELSE 0 END + p_rows;
BEGIN
    IF v_rows > 15728640 THEN
        RAISE EXCEPTION 'a transaction writes at most 15728640 ledger rows through batches and retroactive applications, this one % more after %',
                        p_rows, v_rows - p_rows
            USING ERRCODE = 'PX023',
                  HINT = 'commit and go on in a new transaction: the change feed ranks one transaction''s rows below 2^24';
    END IF;
    PERFORM set_config('pyxp.transaction_rows', v_rows::text, true);
END
$$;

COMMENT ON FUNCTION pyxp.counted_transaction_rows(bigint) IS
    'internal: counts the rows a transaction writes through batches and retroactive applications; PX023 past 15728640.';

REVOKE ALL ON FUNCTION pyxp.counted_transaction_rows(bigint) FROM PUBLIC;

CREATE FUNCTION pyxp.raised_feed_overflow(p_group xid8)
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'feed group % holds more than 16777215 rows: their cursors would be the next group''s', p_group
        USING ERRCODE = 'PX031',
              HINT = 'see README "Live XP": a transaction that writes that many rows cannot be followed by cursor';
END
$$;

COMMENT ON FUNCTION pyxp.raised_feed_overflow(xid8) IS
    'internal: PX031, a feed group holding more rows than a cursor can rank.';

REVOKE ALL ON FUNCTION pyxp.raised_feed_overflow(xid8) FROM PUBLIC;

CREATE FUNCTION pyxp.email_before_0028(p_email text, p_email_now text)
RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(DISTINCT f.form ORDER BY f.form) FILTER (WHERE f.form <> p_email_now), '{}')
      FROM (SELECT lower(pyxp.cleaned_text('client email', p_email, 254, 'PX002', true)) AS form
            UNION ALL
            SELECT e.stored_form FROM pyxp.xp_email_forms_before_0028 e WHERE e.client_email = p_email_now) f
$$;

COMMENT ON FUNCTION pyxp.email_before_0028(text, text) IS 'internal: the forms a client email was stored in before 0028 (the database''s collation) that read as it now.';

REVOKE ALL ON FUNCTION pyxp.email_before_0028(text, text) FROM PUBLIC;

DROP FUNCTION pyxp.check_completion_owner(text, text, text, text);

CREATE FUNCTION pyxp.check_completion_owner(p_completion text, p_wallet text, p_campaign text,
                                            p_own_key text, p_mint numeric DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_subject text := 'completion:' || p_completion;
    v_campaign text;
    v_first jsonb;
BEGIN
    PERFORM pyxp.lock_subject(v_subject);
    SELECT l.campaign_id INTO v_campaign FROM pyxp.subject_locks l WHERE l.subject = v_subject;
    IF v_campaign IS NULL OR p_wallet IS NOT NULL THEN
        SELECT r.inputs INTO v_first
          FROM unnest(ARRAY['completion.submitted:' || p_completion, 'completion.outcome:' || p_completion]) k (key)
         CROSS JOIN LATERAL pyxp.recorded_request(k.key) r
         WHERE k.key <> p_own_key AND r.same_key
         ORDER BY r.created_at
         LIMIT 1;
    END IF;
    IF v_campaign IS NULL THEN
        -- The completion's first call since 0023: the campaign of its
        -- submission or outcome if it has one, else this call's.
        v_campaign := coalesce(v_first ->> 'campaign_id', p_campaign);
        UPDATE pyxp.subject_locks l SET campaign_id = v_campaign WHERE l.subject = v_subject;
    END IF;
    IF v_campaign IS DISTINCT FROM p_campaign
       OR (p_wallet IS NOT NULL AND v_first IS NOT NULL AND v_first ->> 'wallet' IS DISTINCT FROM p_wallet) THEN
        RAISE EXCEPTION 'completion % belongs to % on campaign %, not % on campaign %', p_completion,
                        coalesce(v_first ->> 'wallet', '(no completer yet)'), v_campaign,
                        coalesce(p_wallet, '(a moderator)'), p_campaign
            USING ERRCODE = 'PX011',
                  DETAIL = format('recorded: %s', coalesce(v_first, jsonb_build_object('campaign_id', v_campaign))),
                  HINT = 'name the completer wallet and campaign of the completion''s first call';
    ELSIF p_mint IS NOT NULL AND v_first ->> 'event' IN ('completion.submitted', 'completion.refused')
          AND (v_first ->> 'MINT_VALUE_WINC')::numeric <> p_mint THEN
        RAISE EXCEPTION 'completion % was recorded with mint_value_winc %, not %', p_completion,
                        v_first ->> 'MINT_VALUE_WINC', p_mint
            USING ERRCODE = 'PX011',
                  DETAIL = format('recorded: %s', v_first),
                  HINT = 'pass the mint_value_winc of the completion''s submission';
    END IF;
END
$$;

COMMENT ON FUNCTION pyxp.check_completion_owner(text, text, text, text, numeric) IS 'internal: PX011 when a call names another completer, campaign or MINT value than the completion''s.';

REVOKE ALL ON FUNCTION pyxp.check_completion_owner(text, text, text, text, numeric) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pyxp.checked_email(p_email text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.lower_cased(pyxp.cleaned_text('client email', p_email, 254, 'PX002', true));
BEGIN
    IF v IS NULL OR length(v) > 254
       OR v !~ '^[^@[:space:][:cntrl:]]+@([^@[:space:][:cntrl:].]+[.])+[^@[:space:][:cntrl:].]+$'
    THEN
        RAISE EXCEPTION 'invalid client email: %', coalesce(quote_literal(left(p_email, 300)), 'NULL')
            USING ERRCODE = 'PX002',
                  HINT = 'an email is local@domain.tld: one @, a non-empty local part, a domain with a dot, at most 254 characters';
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_campaign_type(p_type text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_type) <= 64 THEN regexp_replace(upper(btrim(p_type) COLLATE "C"), '^FOR_', '') END;
BEGIN
    IF p_type IS NULL THEN
        RETURN NULL;
    ELSIF v IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'unknown campaign type: %', quote_literal(left(p_type, 100))
        USING ERRCODE = 'PX003',
              HINT = 'accepted: B2C, AGENCY_B2C, INDIVIDUAL (any case), or FOR_B2C, FOR_AGENCY_B2C, FOR_INDIVIDUAL';
END
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_vote(p_decision text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := CASE WHEN octet_length(p_decision) <= 64 THEN upper(btrim(p_decision) COLLATE "C") END;
BEGIN
    IF v IN ('VALID', 'REFUSE') THEN
        RETURN v;
    END IF;
    RAISE EXCEPTION 'invalid vote decision: %', coalesce(quote_literal(left(p_decision, 100)), 'NULL')
        USING ERRCODE = 'PX008', HINT = 'accepted: VALID or REFUSE';
END
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_number(p_what text, p_value numeric)
RETURNS numeric
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF p_value IS NULL THEN
        RETURN NULL;
    ELSIF p_value = 'NaN'::numeric OR p_value IN ('Infinity'::numeric, '-Infinity'::numeric) THEN
        RAISE EXCEPTION 'invalid %: % is not a finite number', p_what, p_value
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    ELSIF p_value < 0 OR p_value > 1e15 THEN
        -- Cut past 40 characters: 1e130000 printed in full made a 130 kB
        -- message (0028, a hostile test).
        RAISE EXCEPTION 'invalid %: % is out of range', p_what,
                        CASE WHEN length(p_value::text) <= 40 THEN p_value::text
                             ELSE format('%s… (%s characters)', left(p_value::text, 30), length(p_value::text)) END
            USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
    END IF;
    RETURN p_value;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_params(p_params jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v_item record;
    v_result jsonb := '{}';
BEGIN
    IF p_params IS NULL OR p_params = '{}' THEN  -- no inputs (most awards): no query
        RETURN v_result;
    ELSIF pg_column_size(p_params) > 65536 THEN  -- size before work: 64 inputs fit in far less
        RAISE EXCEPTION 'invalid params: % bytes', pg_column_size(p_params)
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
    ELSIF jsonb_typeof(p_params) <> 'object' THEN
        RAISE EXCEPTION 'invalid params: % is not a JSON object', left(p_params::text, 100)
            USING ERRCODE = 'PX017', HINT = 'params is an object of formula inputs, e.g. {"PRICE_COMPLETION": 300}';
    ELSIF (SELECT count(*) FROM jsonb_object_keys(p_params)) > 64 THEN
        RAISE EXCEPTION 'invalid params: % inputs', (SELECT count(*) FROM jsonb_object_keys(p_params))
            USING ERRCODE = 'PX017', HINT = 'params holds at most 64 formula inputs';
    END IF;
    FOR v_item IN SELECT key, value FROM jsonb_each(p_params) LOOP
        IF length(v_item.key) > 64 OR v_item.key !~ '^[A-Za-z_$][A-Za-z0-9_$]*$' THEN
            RAISE EXCEPTION 'invalid params: input name %', quote_literal(left(v_item.key, 70))
                USING ERRCODE = 'PX017', HINT = 'input names are identifiers of at most 64 characters, e.g. PRICE_COMPLETION';
        ELSIF jsonb_typeof(v_item.value) <> 'number' THEN
            RAISE EXCEPTION 'invalid %: % is not a number', v_item.key, left(v_item.value::text, 100)
                USING ERRCODE = 'PX004', HINT = 'a finite number between 0 and 10^15';
        END IF;
        IF v_result ? upper(replace(v_item.key, '$', '') COLLATE "C") THEN
            RAISE EXCEPTION 'invalid params: input % given twice', upper(replace(v_item.key, '$', '') COLLATE "C")
                USING ERRCODE = 'PX017', HINT = 'input names are case-insensitive and ignore $: give each once';
        END IF;
        -- trim_scale: 300.0 and 300 are one input (a generic award's claim
        -- keeps a digest of its inputs' text).
        v_result := v_result || jsonb_build_object(
            upper(replace(v_item.key, '$', '') COLLATE "C"),
            trim_scale(pyxp.checked_number(v_item.key, v_item.value::numeric)));
    END LOOP;
    RETURN v_result;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.award_completion(
    completer_wallet text, campaign_id text, completion_id text, campaign_type text DEFAULT NULL,
    is_validated boolean DEFAULT false, is_refused boolean DEFAULT false, is_paid boolean DEFAULT false,
    price_completion numeric DEFAULT NULL, mint_value_winc numeric DEFAULT NULL)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_wallet text := pyxp.checked_wallet(award_completion.completer_wallet, 'completer wallet');
    v_campaign text := pyxp.checked_identifier('campaign id', award_completion.campaign_id);
    v_completion text := pyxp.checked_identifier('completion id', award_completion.completion_id);
    v_validated boolean := coalesce(award_completion.is_validated, false);
    v_refused boolean := coalesce(award_completion.is_refused, false);
    v_paid boolean := coalesce(award_completion.is_paid, false);
    v_price numeric := pyxp.checked_number('price_completion', award_completion.price_completion);
    v_mint numeric := pyxp.checked_number('mint_value_winc', award_completion.mint_value_winc);
    v_type text;
    v_event text;
    v_params jsonb;
    v_inputs jsonb;
    v_key text;
BEGIN
    IF v_validated AND v_refused THEN
        RAISE EXCEPTION 'completion % cannot be both validated and refused', v_completion
            USING ERRCODE = 'PX005', HINT = 'set is_validated or is_refused, or neither for a submission';
    ELSIF v_paid AND coalesce(v_price, 0) <= 0 THEN
        RAISE EXCEPTION 'paid completion % needs a positive price_completion, got %', v_completion,
                        coalesce(v_price::text, 'NULL')
            USING ERRCODE = 'PX006', HINT = 'is_paid => true with price_completion > 0';
    ELSIF NOT v_paid AND v_price > 0 THEN
        RAISE EXCEPTION 'free completion % has a price_completion (%)', v_completion, v_price
            USING ERRCODE = 'PX006', HINT = 'a price above 0 only goes with is_paid => true';
    END IF;
    v_type := pyxp.resolved_campaign_type(v_campaign, award_completion.campaign_type);
    IF v_type = 'INDIVIDUAL' AND NOT v_validated AND coalesce(v_mint, 0) <= 0 THEN
        RAISE EXCEPTION 'INDIVIDUAL completion % needs a positive mint_value_winc, got %', v_completion,
                        coalesce(v_mint::text, 'NULL')
            USING ERRCODE = 'PX007', HINT = 'pass mint_value_winc, the MINT value in $WINC (> 0)';
    END IF;

    v_event := CASE WHEN v_validated THEN 'completion.validated'
                    WHEN v_refused THEN 'completion.refused'
                    ELSE 'completion.submitted' END;
    v_key := CASE WHEN v_event = 'completion.submitted' THEN 'completion.submitted:' ELSE 'completion.outcome:' END
             || v_completion;
    v_inputs := jsonb_build_object('event', v_event, 'wallet', v_wallet, 'campaign_id', v_campaign,
                                   'campaign_type', v_type, 'is_paid', v_paid);
    -- A free mission's price 0 is no price: one call with or without it
    -- (0028: a retry without it got PX010, a hostile test). A call recorded
    -- with its 0 before 0028 keeps it, and replays either way.
    IF NOT v_paid AND coalesce(v_price, 0) = 0 THEN
        v_price := CASE WHEN pyxp.call_recorded(v_key, v_inputs || pyxp.formula_inputs(0, v_mint, NULL)) THEN 0 END;
    END IF;
    v_params := pyxp.formula_inputs(v_price, v_mint, NULL);
    v_inputs := v_inputs || v_params;
    -- The completion's submission (or outcome) made before, with these
    -- inputs or others, is the key's business: a replay, or PX010.
    IF NOT EXISTS (SELECT FROM pyxp.recorded_request(v_key)) THEN
        PERFORM pyxp.check_completion_owner(v_completion, v_wallet, v_campaign, v_key,
                                            CASE WHEN v_type = 'INDIVIDUAL' AND NOT v_validated THEN v_mint END);
    END IF;
    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key,
        v_inputs, v_wallet, v_event, v_type,
        ARRAY[CASE WHEN v_paid THEN 'paid' ELSE 'free' END],
        v_params, v_campaign, v_completion,
        jsonb_build_object('campaign_type', v_type, 'is_paid', v_paid) || v_params, 0,
        CASE WHEN v_event = 'completion.submitted'
             THEN format('completion %s was already submitted with other inputs', v_completion)
             ELSE format('completion %s already has an outcome recorded with other inputs '
                         '(validated or refused, once, never both)', v_completion) END);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.register_agency_client(
    agency_wallet text, client_email text, campaign_id text, company_name text DEFAULT NULL)
RETURNS SETOF pyxp.agency_b2c_clients
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_agency text := pyxp.checked_wallet(register_agency_client.agency_wallet, 'agency wallet');
    v_email text := pyxp.checked_email(register_agency_client.client_email);
    v_before text[] := pyxp.email_before_0028(register_agency_client.client_email, v_email);
    v_campaign text := pyxp.checked_identifier('campaign id', register_agency_client.campaign_id);
    v_company text;
    v_known pyxp.campaigns;
    v_approved text;     -- the creator an approval of the campaign named, if any
    v_onboarded record;  -- the client's onboarding, if any: its request
BEGIN
    IF register_agency_client.company_name IS NOT NULL THEN  -- blank: none
        v_company := nullif(pyxp.cleaned_text('company name', register_agency_client.company_name, 200,
                                              'PX016', false), '');
        IF v_company IS NOT NULL THEN
            v_company := pyxp.checked_identifier('company name', v_company, 200);
        END IF;
    END IF;
    PERFORM pyxp.require_read_committed();
    -- The same registration again: its row, nothing changed (SPEC 5),
    -- whatever the registry says since.
    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = ANY (v_email || v_before) AND a.campaign_id = v_campaign;
    IF FOUND THEN
        RETURN;
    END IF;
    -- A campaign pyxp does not know becomes the agency's AGENCY_B2C campaign
    -- (0023), so that a creation by another wallet is refused; the registry
    -- row is locked until commit (a concurrent creation waits, then sees it).
    INSERT INTO pyxp.campaigns (campaign_id, campaign_type, creator_wallet)
    VALUES (v_campaign, 'AGENCY_B2C', v_agency)
    ON CONFLICT ON CONSTRAINT campaigns_pkey DO NOTHING;
    SELECT * INTO STRICT v_known FROM pyxp.campaigns c WHERE c.campaign_id = v_campaign FOR UPDATE;
    IF v_known.campaign_type <> 'AGENCY_B2C' OR v_known.creator_wallet <> v_agency THEN
        RAISE EXCEPTION 'campaign % is a % campaign created by %, not an AGENCY_B2C campaign of %',
                        v_campaign, v_known.campaign_type, v_known.creator_wallet, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    END IF;
    -- An approval names the campaign's creator too, and may precede its
    -- creation: it must be this agency (0028; a hostile test saw an approval
    -- pay +100 to one wallet and a registration make the campaign another's,
    -- which then nobody could create). Serialised with approvals and
    -- creations on the campaign's subject lock (see award_campaign_creation),
    -- taken after the registry row's, as a creation does.
    PERFORM pyxp.lock_subject('campaign:' || v_campaign);
    SELECT r.inputs ->> 'wallet' INTO v_approved
      FROM pyxp.recorded_request('campaign.approved:' || v_campaign) r WHERE r.same_key;
    IF v_approved <> v_agency THEN
        RAISE EXCEPTION 'campaign % was approved for creator %, not the agency %', v_campaign, v_approved, v_agency
            USING ERRCODE = 'PX022', HINT = 'register clients on the agency''s own AGENCY_B2C campaigns';
    ELSIF v_known.creator_wallet IS NULL THEN  -- its type recorded by a vote or completion: now its agency
        UPDATE pyxp.campaigns c SET creator_wallet = v_agency WHERE c.campaign_id = v_campaign;
    END IF;

    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT r.inputs ->> 'wallet' AS wallet, r.created_at, e.email INTO v_onboarded
      FROM unnest(v_email || v_before) WITH ORDINALITY e(email, n)
     CROSS JOIN LATERAL pyxp.recorded_request('client.onboarded:' || e.email) r
     ORDER BY e.n
     LIMIT 1;
    IF v_onboarded.wallet = v_agency THEN  -- as onboard_agency_client refuses it the other way round
        RAISE EXCEPTION 'client % was onboarded with wallet %, the registering agency''s', v_email, v_agency
            USING ERRCODE = 'PX021', HINT = 'the onboarding XP goes to the client''s own wallet, never the agency';
    END IF;
    -- Stored as the email's onboarding spelt it (before 0028, maybe otherwise).
    v_email := coalesce(v_onboarded.email, v_email);
    INSERT INTO pyxp.agency_b2c_clients AS a (agency_wallet, client_email, campaign_id, company_name,
                                              client_wallet, xp_granted, onboarded_at)
    VALUES (v_agency, v_email, v_campaign, v_company, v_onboarded.wallet,
            v_onboarded.created_at IS NOT NULL, v_onboarded.created_at)
    ON CONFLICT ON CONSTRAINT agency_b2c_clients_agency_wallet_client_email_campaign_id_key DO NOTHING;

    RETURN QUERY
        SELECT a.* FROM pyxp.agency_b2c_clients a
         WHERE a.agency_wallet = v_agency AND a.client_email = v_email AND a.campaign_id = v_campaign;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.onboard_agency_client(client_email text, client_wallet text)
RETURNS SETOF pyxp.award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_email text := pyxp.checked_email(onboard_agency_client.client_email);
    v_before text[] := pyxp.email_before_0028(onboard_agency_client.client_email, v_email);
    v_wallet text := pyxp.checked_wallet(onboard_agency_client.client_wallet, 'client wallet');
    v_key text := 'client.onboarded:' || v_email;
    v_pending record;
BEGIN
    PERFORM pyxp.require_read_committed();
    -- An email onboarded before 0028 in the form of that time (see
    -- pyxp.email_before_0028) keeps its key: a replay, or PX010.
    IF cardinality(v_before) > 0
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
        v_key := coalesce((SELECT 'client.onboarded:' || f.form
                             FROM unnest(v_before) WITH ORDINALITY f(form, n)
                            WHERE EXISTS (SELECT FROM pyxp.xp_requests q
                                           WHERE q.key_hash = pyxp.key_hash('client.onboarded:' || f.form))
                            ORDER BY f.n LIMIT 1), v_key);
    END IF;
    -- Nobody registered this client and it was never onboarded: nothing to
    -- grant, and nothing written, not even its subject lock's row (0028). A
    -- registration committing meanwhile stays pending until the next sign-in,
    -- as if this one had come first.
    IF NOT EXISTS (SELECT FROM pyxp.agency_b2c_clients a WHERE a.client_email = ANY (v_email || v_before))
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
        RETURN;
    END IF;
    PERFORM pyxp.lock_subject('client_email:' || v_email);
    SELECT array_agg(a.agency_wallet ORDER BY a.id) AS agencies,
           array_agg(a.campaign_id ORDER BY a.id) AS campaigns,
           (array_agg(a.company_name ORDER BY a.id) FILTER (WHERE a.company_name IS NOT NULL))[1] AS company
      INTO v_pending
      FROM pyxp.agency_b2c_clients a
     WHERE a.client_email = ANY (v_email || v_before) AND NOT a.xp_granted;

    IF v_pending.agencies IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_requests q WHERE q.key_hash = pyxp.key_hash(v_key)) THEN
        RETURN;  -- nobody registered this client: nothing to grant
    ELSIF v_wallet = ANY (v_pending.agencies) THEN
        RAISE EXCEPTION 'client wallet % is the registering agency''s wallet', v_wallet
            USING ERRCODE = 'PX021', HINT = 'the onboarding XP goes to the client''s own wallet, never the agency';
    END IF;

    RETURN QUERY SELECT * FROM pyxp.post_award(
        v_key, jsonb_build_object('wallet', v_wallet),
        v_wallet, 'client.onboarded', 'AGENCY_B2C', '{}',
        '{}', v_pending.campaigns[1], v_email,
        jsonb_strip_nulls(jsonb_build_object(
            'agency_wallet', v_pending.agencies[1],
            'agency_wallets', CASE WHEN cardinality(v_pending.agencies) > 1 THEN to_jsonb(v_pending.agencies) END,
            'campaign_ids', CASE WHEN cardinality(v_pending.campaigns) > 1 THEN to_jsonb(v_pending.campaigns) END,
            'company_name', v_pending.company)),
        0, format('client %s was already onboarded with another wallet', v_email));

    UPDATE pyxp.agency_b2c_clients a
       SET xp_granted = true, client_wallet = v_wallet, onboarded_at = now()
     WHERE a.client_email = ANY (v_email || v_before) AND NOT a.xp_granted;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.award_many(events jsonb)
RETURNS SETOF pyxp.batch_award_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_events pyxp.batch_event[] := '{}';
    v_event pyxp.batch_event;
    v_item jsonb;
    v_index integer := -1;
    v_ruleset record;
    v_problem record;
    v_message text;
    v_hint text;
    v_code text;
BEGIN
    IF pg_column_size(award_many.events) > 16777216 THEN  -- size before work
        RAISE EXCEPTION 'a batch holds at most 16 MiB of JSON, got % bytes', pg_column_size(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    ELSIF jsonb_typeof(award_many.events) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of awards'
            USING ERRCODE = 'PX017',
                  HINT = '[{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}, "context": {...}}]';
    ELSIF jsonb_array_length(award_many.events) > 10000 THEN
        RAISE EXCEPTION 'a batch holds at most 10000 events, got %', jsonb_array_length(award_many.events)
            USING ERRCODE = 'PX023', HINT = 'split the batch';
    END IF;

    -- 1. Validate and normalise each event, as pyxp.award does. One exception
    --    block for the whole loop (not one per event): it only adds the index.
    BEGIN
        FOR v_item IN SELECT e FROM jsonb_array_elements(award_many.events) e LOOP
            v_index := v_index + 1;
            IF jsonb_typeof(v_item) IS DISTINCT FROM 'object' THEN
                RAISE EXCEPTION 'not a JSON object' USING ERRCODE = 'PX017',
                    HINT = '{"wallet": ..., "action": ..., "idempotency_key": ..., "params": {...}}';
            END IF;
            v_event.event_index := v_index;
            -- Texts only: a number or object is not silently turned into its JSON text.
            v_event.wallet := pyxp.checked_wallet(
                CASE WHEN jsonb_typeof(v_item -> 'wallet') = 'string' THEN v_item ->> 'wallet' END);
            v_event.action := pyxp.checked_identifier('action',
                CASE WHEN jsonb_typeof(v_item -> 'action') = 'string' THEN v_item ->> 'action' END, 64);
            v_event.key := pyxp.checked_award_key(
                CASE WHEN jsonb_typeof(v_item -> 'idempotency_key') = 'string'
                     THEN v_item ->> 'idempotency_key' END);
            -- JSON null params/context: as if omitted (SQL NULL in pyxp.award).
            v_event.params := pyxp.checked_params(nullif(v_item -> 'params', 'null'::jsonb));
            v_event.metadata := pyxp.checked_context(nullif(v_item -> 'context', 'null'::jsonb));
            v_event.campaign_id := pyxp.context_column(v_event.metadata, 'campaign_id', 128);
            v_event.subject := pyxp.context_column(v_event.metadata, 'subject', 256);
            v_event.metadata := v_event.metadata || v_event.params;
            -- Same canonical inputs as pyxp.award: a batch replays single awards and back.
            v_event.inputs := jsonb_build_object('action', v_event.action, 'wallet', v_event.wallet,
                                                 'params', v_event.params);
            v_events := v_events || v_event;
        END LOOP;
        -- A field pyxp does not read is a mistake, not a note: a misspelt
        -- "params" or "context" was dropped and the award made without it
        -- (0028, a hostile test). One query over the batch, every event an
        -- object by now. An event whose key is claimed is a retry, which
        -- replays whatever it carries (a batch made before 0028 was refused
        -- on its retry: a second hostile test).
        SELECT e.i - 1 AS event_index, k.key INTO v_problem
          FROM jsonb_array_elements(award_many.events) WITH ORDINALITY e(item, i)
         CROSS JOIN LATERAL jsonb_object_keys(e.item) k(key)
         WHERE k.key NOT IN ('wallet', 'action', 'idempotency_key', 'params', 'context')
           AND NOT EXISTS (SELECT FROM pyxp.xp_award_claims c
                            WHERE c.key_hash = pyxp.key_hash(v_events[e.i].key) LIMIT 1)
         ORDER BY e.i
         LIMIT 1;
        IF FOUND THEN
            v_index := v_problem.event_index;
            RAISE EXCEPTION 'unknown field %', quote_literal(left(v_problem.key, 70)) USING ERRCODE = 'PX017',
                HINT = 'an event holds "wallet", "action", "idempotency_key", and optionally "params" and "context"';
        END IF;
    EXCEPTION WHEN SQLSTATE 'PX001' OR SQLSTATE 'PX004' OR SQLSTATE 'PX016' OR SQLSTATE 'PX017' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_hint = PG_EXCEPTION_HINT, v_code = RETURNED_SQLSTATE;
        RAISE EXCEPTION 'event %: %', v_index, v_message
            USING ERRCODE = v_code, HINT = coalesce(nullif(v_hint, ''), 'see README: Error codes');
    END;

    -- 2. Within the batch, a repeated key must carry the same inputs.
    SELECT e.event_index, e.key, f.event_index AS first_index INTO v_problem
      FROM (SELECT e.*, min(e.event_index) OVER (PARTITION BY e.key) AS first_index FROM unnest(v_events) e) e
      JOIN unnest(v_events) f ON f.event_index = e.first_index
     WHERE e.event_index <> e.first_index AND e.inputs IS DISTINCT FROM f.inputs
     ORDER BY e.event_index LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'event %: idempotency key % was already used with other inputs (event %)',
                        v_problem.event_index, quote_literal(v_problem.key), v_problem.first_index
            USING ERRCODE = 'PX010', HINT = 'repeat a call with exactly the same inputs to get its result again';
    END IF;

    PERFORM pyxp.counted_transaction_rows(cardinality(v_events));  -- the feed's bound (sql/11_changes.sql)
    -- 3. Plan and write the first occurrence of each key; one result row per
    --    event, in event order: its rows, or its first occurrence's (replayed).
    SELECT * INTO v_ruleset FROM pyxp.writing_ruleset();
    RETURN QUERY
        WITH firsts AS (
            SELECT e.event_index, min(e.event_index) OVER (PARTITION BY e.key) AS first_index
              FROM unnest(v_events) e
        ), written AS (
            SELECT * FROM pyxp.append_rows(
                v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone, v_ruleset.has_caps,
                pyxp.planned_awards(v_ruleset.ruleset_id,
                                    ARRAY(SELECT e FROM unnest(v_events) e
                                            JOIN firsts f ON f.event_index = e.event_index
                                           WHERE f.first_index = f.event_index
                                           ORDER BY e.event_index), true),
                true)
        )
        SELECT f.event_index, w.transaction_id, w.user_wallet, w.transaction_type, w.xp_amount, w.xp_requested,
               w.total_xp, w.current_level, w.xp_to_next_level, w.previous_level,
               w.replayed OR f.event_index <> f.first_index
          FROM firsts f JOIN written w ON w.event_index = f.first_index
         ORDER BY f.event_index, w.transaction_id;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.audit()
RETURNS TABLE (check_name text, user_wallet text, transaction_id bigint, detail text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET jit = off
SET parallel_tuple_cost = 0
AS $$
    SELECT 'active_ruleset', NULL::text, NULL::bigint,
           format('%s active rulesets, expected 1', count(*))
      FROM pyxp.rulesets r WHERE r.is_active HAVING count(*) <> 1
    UNION ALL
    -- The chain walk and, beside it, the unsliced checks (ranks, checkpoints
    -- without a balance, wallets' forms, caps: pyxp.unsliced_problems).
    SELECT * FROM pyxp.chain_problems(false, true)
    UNION ALL
    SELECT * FROM pyxp.row_problems(false)
    UNION ALL
    -- Rows of a wallet without a balance row: the walk starts from the
    -- balances, so it counts them; when every row was walked (the count
    -- matches), nothing more is read.
    SELECT 'balance_mismatch', o.user_wallet, NULL, format('ledger sum %s but no xp_balances row', o.total)
      FROM (SELECT t.user_wallet, sum(t.xp_amount) AS total
              FROM pyxp.xp_transactions t
             WHERE NOT EXISTS (SELECT FROM pyxp.xp_balances b WHERE b.user_wallet = t.user_wallet)
             GROUP BY t.user_wallet) o
     WHERE (SELECT count(*) FROM pyxp.xp_transactions)
           + (SELECT coalesce(sum(a.rows_archived), 0) FROM pyxp.xp_ledger_archives a)
           <> (SELECT coalesce(sum(b.last_wallet_seq), 0) FROM pyxp.xp_balances b)
    UNION ALL
    SELECT 'moderation_count', b.user_wallet, NULL,
           format('total_moderations = %s, votes recorded = %s', b.total_moderations, coalesce(v.votes, 0))
      FROM pyxp.xp_balances b
      -- A vote is a request of a vote key: its rows (all to the voter) hold
      -- the key, or (a vote no rule awards) the request keeps it.
      FULL JOIN (SELECT x.user_wallet, count(*) AS votes
                   FROM (SELECT t.user_wallet, t.idempotency_key
                           FROM pyxp.xp_transactions t
                          WHERE t.request_digest IS NULL
                            AND t.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:'
                         UNION
                         SELECT q.inputs ->> 'wallet', q.idempotency_key
                           FROM pyxp.xp_requests q
                          WHERE q.idempotency_key ~ '^(campaign|completion)[.]vote(/[0-9]+)?:') x
                  GROUP BY 1) v ON v.user_wallet = b.user_wallet
     WHERE coalesce(b.total_moderations, 0) <> coalesce(v.votes, 0)
    UNION ALL
    -- A request that keeps neither its key nor its inputs has them in its
    -- ledger rows only (pyxp.recorded_request): without a row, a retry's
    -- inputs could not be shown or a vote counted.
    SELECT 'request_rows_missing', NULL, NULL,
           format('request %s (claimed %s) keeps no key and no ledger row holds it', q.key_hash, q.created_at)
      FROM pyxp.xp_requests q
     WHERE q.idempotency_key IS NULL
       AND NOT EXISTS (SELECT FROM pyxp.xp_transactions t
                        WHERE pyxp.key_hash(t.idempotency_key) = q.key_hash AND t.request_digest IS NULL)
    UNION ALL
    SELECT 'registration_grant', a.client_wallet, NULL,
           format('registration %s of %s is %s', a.id, a.client_email,
                  CASE WHEN a.xp_granted THEN 'granted without an onboarding of that email'
                       ELSE 'pending although that email was onboarded' END)
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT EXISTS (
                SELECT FROM pyxp.xp_requests q
                 WHERE q.key_hash IN (pyxp.key_hash('client.onboarded:' || a.client_email),
                                      -- stored as read before 0028, onboarded since (pyxp.email_before_0028)
                                      pyxp.key_hash('client.onboarded:'
                                                    || pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)))))
                AS onboarded) q
     WHERE a.xp_granted <> q.onboarded
    UNION ALL
    -- Client emails stored before 0002 that today's checks would read
    -- otherwise (the wallets: pyxp.unsliced_problems).
    SELECT 'identity_not_normalised', a.client_wallet, NULL,
           format('client email %s of registration %s is read %s since 0002', quote_literal(a.client_email), a.id,
                  coalesce(quote_literal(f.form), 'as refused'))
      FROM pyxp.agency_b2c_clients a
     CROSS JOIN LATERAL (SELECT CASE WHEN pyxp.invisible_character(x.t) IS NULL THEN x.t END AS form
                           FROM (SELECT pyxp.lower_cased(pyxp.trimmed_text(a.client_email, true)) AS t) x) f
     WHERE f.form IS DISTINCT FROM a.client_email
       -- or as read before 0028 (lower() in the database's collation: pyxp.email_before_0028)
       AND (f.form IS NULL OR lower(pyxp.trimmed_text(a.client_email, true)) IS DISTINCT FROM a.client_email)
    UNION ALL
    -- No finding; 40001 when the ledger was read with a snapshot older than
    -- an archive's commit (its rows would have been reported missing).
    SELECT NULL, NULL, NULL, NULL WHERE NOT pyxp.ledger_unmoved()
    ORDER BY 1, 2, 3
$$;

CREATE OR REPLACE FUNCTION pyxp.checked_award_key(p_key text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    v text := pyxp.checked_identifier('idempotency key', p_key, 256);
BEGIN
    IF v ~ '^(campaign[.](created|approved|vote)|completion[.](submitted|outcome|vote)|client[.]onboarded|reverse|rules[.]adjustment)(/[0-9]+)?:' THEN
        RAISE EXCEPTION 'invalid idempotency key %: reserved for pyxp''s own flows', quote_literal(v)
            USING ERRCODE = 'PX016',
                  HINT = 'keys starting with campaign.*:, completion.*:, client.onboarded:, reverse: or rules.adjustment: are pyxp''s';
    END IF;
    RETURN v;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.check_ruleset_definition(p_definition jsonb)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_problem text;
BEGIN
    SELECT problem INTO v_problem FROM (
        SELECT 'name must be a non-empty text' AS problem
         WHERE coalesce(p_definition ->> 'name', '') !~ '^[a-z0-9][a-z0-9_-]{0,62}$'
        UNION ALL
        SELECT 'levels must be a non-empty array'
         WHERE jsonb_typeof(p_definition -> 'levels') IS DISTINCT FROM 'array'
            OR jsonb_array_length(p_definition -> 'levels') = 0
        UNION ALL
        SELECT 'rules must be an array'
         WHERE jsonb_typeof(p_definition -> 'rules') IS DISTINCT FROM 'array'
        UNION ALL
        SELECT 'balance_floor must be an integer or null'
         WHERE jsonb_typeof(p_definition -> 'balance_floor') NOT IN ('null', 'number')
            OR (p_definition ->> 'balance_floor') !~ '^-?[0-9]{1,16}$'
        UNION ALL
        SELECT format('timezone %s is not an IANA time zone name', p_definition -> 'timezone')
         WHERE p_definition ? 'timezone'
           AND (jsonb_typeof(p_definition -> 'timezone') IS DISTINCT FROM 'string'
                OR NOT EXISTS (SELECT FROM pg_catalog.pg_timezone_names z
                                WHERE z.name = p_definition ->> 'timezone'))
    ) p LIMIT 1;
    IF v_problem IS NULL THEN
        SELECT format('level row %s: %s', ord, problem) INTO v_problem FROM (
            SELECT l.ord,
                   CASE
                     WHEN (l.value ->> 'level') !~ '^[0-9]{1,18}$' OR (l.value ->> 'threshold') !~ '^[0-9]{1,18}$'
                          OR (l.value ->> 'increment') !~ '^[0-9]{1,18}$'
                          OR jsonb_typeof(l.value -> 'is_last') IS DISTINCT FROM 'boolean'
                       THEN 'level, threshold, increment must be integers and is_last a boolean'
                     WHEN (l.value ->> 'level')::bigint <> l.ord THEN 'levels must be 1, 2, 3, ... in order'
                     WHEN l.ord = 1 AND (l.value ->> 'threshold')::bigint <> 0 THEN 'level 1 starts at 0 XP'
                     WHEN (l.value ->> 'increment')::bigint <= 0 THEN 'increments are positive'
                     WHEN (l.value ->> 'is_last')::boolean <> (l.ord = l.total) THEN 'only the last row has is_last'
                     WHEN l.ord < l.total AND (l.value ->> 'threshold')::numeric + (l.value ->> 'increment')::numeric
                          <> (l.next_value ->> 'threshold')::numeric
                       THEN 'threshold + increment must equal the next threshold'
                   END AS problem
            FROM (
                SELECT e.value, e.ord, lead(e.value) OVER (ORDER BY e.ord) AS next_value,
                       count(*) OVER () AS total
                FROM jsonb_array_elements(p_definition -> 'levels') WITH ORDINALITY e(value, ord)
            ) l
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NULL THEN
        SELECT format('rule %s: %s', ord, problem) INTO v_problem FROM (
            SELECT r.ord,
                   CASE
                     WHEN coalesce(r.value ->> 'action', '') !~ '^[A-Za-z][A-Za-z0-9_]{0,63}$'
                       THEN 'action must match [A-Za-z][A-Za-z0-9_]{0,63}'
                     WHEN count(*) OVER (PARTITION BY r.value ->> 'action') > 1
                       THEN format('duplicate action %s', r.value ->> 'action')
                     WHEN upper(r.value ->> 'action') IN ('REVERSAL', 'RULES_ADJUSTMENT')
                       THEN format('action %s is reserved for pyxp''s own rows', r.value ->> 'action')
                     WHEN jsonb_typeof(r.value -> 'event') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'condition') NOT IN ('null', 'string')
                       OR jsonb_typeof(r.value -> 'formula') NOT IN ('null', 'string')
                       THEN 'event, condition and formula must be texts or null'
                     WHEN coalesce(r.value ->> 'constant', '') !~ '^-?[0-9]{1,16}([.][0-9]{1,20})?$'
                       THEN 'constant must be a decimal number'
                     WHEN jsonb_typeof(r.value -> 'coefficients') IS DISTINCT FROM 'object'
                       OR EXISTS (SELECT FROM jsonb_each_text(r.value -> 'coefficients') c
                                   WHERE c.key !~ '^[A-Z_][A-Z0-9_]{0,63}$'
                                      OR c.value !~ '^-?[0-9]{1,16}([.][0-9]{1,20})?$')
                       THEN 'coefficients must map INPUT names to decimal numbers'
                     WHEN jsonb_typeof(r.value -> 'campaign_types') NOT IN ('null', 'array')
                       OR EXISTS (SELECT FROM jsonb_array_elements_text(
                                      CASE WHEN jsonb_typeof(r.value -> 'campaign_types') = 'array'
                                           THEN r.value -> 'campaign_types' ELSE '[]' END) t
                                   WHERE t NOT IN ('B2C', 'AGENCY_B2C', 'INDIVIDUAL'))
                       THEN 'campaign_types must be null or a list of B2C, AGENCY_B2C, INDIVIDUAL'
                     WHEN r.value ? 'cap' AND (
                            jsonb_typeof(r.value -> 'cap') IS DISTINCT FROM 'object'
                            OR (SELECT count(*) FROM jsonb_object_keys(r.value -> 'cap')) <> 2
                            OR jsonb_typeof(r.value -> 'cap' -> 'max_xp') IS DISTINCT FROM 'number'
                            OR coalesce(r.value -> 'cap' ->> 'max_xp', '') !~ '^[0-9]{1,16}$'
                            OR NOT (r.value -> 'cap' ->> 'max_xp')::numeric BETWEEN 1 AND 1e15
                            OR coalesce(r.value -> 'cap' ->> 'per', '') NOT IN ('day', 'week', 'month', 'year'))
                       THEN 'cap must be {"max_xp": 1..10^15, "per": "day", "week", "month" or "year"}'
                     WHEN r.value ? 'group' AND (jsonb_typeof(r.value -> 'group') IS DISTINCT FROM 'string'
                                                 OR (r.value ->> 'group') !~ '^[a-z][a-z0-9_-]{0,62}$')
                       THEN 'group must match [a-z][a-z0-9_-]{0,62}'
                     WHEN r.value ? 'group' AND NOT r.value ? 'cap'
                       THEN format('group %s needs a cap: every rule of a group carries the same cap',
                                   r.value ->> 'group')
                     WHEN r.value ? 'group'
                          AND min((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                              <> max((r.value -> 'cap')::text) OVER (PARTITION BY r.value ->> 'group')
                       THEN format('the rules of group %s carry different caps', r.value ->> 'group')
                   END AS problem
            FROM jsonb_array_elements(p_definition -> 'rules') WITH ORDINALITY r(value, ord)
        ) p WHERE problem IS NOT NULL ORDER BY ord LIMIT 1;
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'invalid ruleset definition %: %', coalesce(quote_literal(p_definition ->> 'name'), 'NULL'), v_problem
            USING ERRCODE = 'PX024', HINT = 'compile rulesets from a TOML config seed: pyxp rules apply FILE';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.ledger_partitions()
RETURNS TABLE (partition_name text, range_start timestamptz, range_end timestamptz, is_default boolean)
LANGUAGE sql STABLE
SET search_path = pyxp, pg_temp
SET datestyle = 'ISO, YMD'  -- the bounds are read back from their text: ISO with a numeric offset, never
SET timezone = 'UTC'        -- an abbreviation that reads back as another zone (IST, CST)
AS $$
    SELECT c.relname::text,
           (substring(b.bound FROM 'FROM [(]''([^'']+)''[)]'))::timestamptz,
           (substring(b.bound FROM 'TO [(]''([^'']+)''[)]'))::timestamptz,
           b.bound = 'DEFAULT'
      FROM pg_catalog.pg_inherits i
      JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) b
     WHERE i.inhparent = 'pyxp.xp_transactions'::regclass
     ORDER BY 3 NULLS LAST, 2 NULLS FIRST
$$;

CREATE OR REPLACE FUNCTION pyxp.new_ledger_partition(p_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pyxp, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE TABLE pyxp.%I (LIKE pyxp.xp_transactions INCLUDING DEFAULTS)', p_name);
    EXECUTE format('CREATE TRIGGER xp_transactions_no_truncate BEFORE TRUNCATE ON pyxp.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION pyxp.refuse_ledger_change()', p_name);
    EXECUTE format('ALTER TABLE pyxp.%I ENABLE ALWAYS TRIGGER xp_transactions_no_truncate', p_name);  -- 0028
    EXECUTE format('GRANT SELECT ON pyxp.%I TO pyxp_reader', p_name);
END
$$;

CREATE OR REPLACE FUNCTION pyxp.require_read_committed()
RETURNS void
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
        RAISE EXCEPTION 'pyxp writes run in READ COMMITTED transactions, not %',
                        upper(current_setting('transaction_isolation') COLLATE "C")
            USING ERRCODE = 'PX025',
                  HINT = 'call it in a READ COMMITTED transaction (PostgreSQL''s default): '
                         'BEGIN ISOLATION LEVEL READ COMMITTED, or outside your '
                         || upper(current_setting('transaction_isolation') COLLATE "C") || ' transaction';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.writing_ruleset(OUT ruleset_id bigint, OUT balance_floor bigint, OUT timezone text,
                                     OUT has_caps boolean)
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN  -- no query
        PERFORM pyxp.require_read_committed();  -- PX025
    END IF;
    LOCK TABLE pyxp.xp_balances IN ROW EXCLUSIVE MODE;
    SELECT r.ruleset_id, r.balance_floor, r.timezone, r.has_caps INTO ruleset_id, balance_floor, timezone, has_caps
      FROM pyxp.rulesets r WHERE r.is_active;
    IF ruleset_id IS NULL THEN
        PERFORM pyxp.active_ruleset_id();  -- PX020
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.oldest_running_here(p_snapshot pg_snapshot)
RETURNS xid8
LANGUAGE sql STABLE
AS $$
    SELECT min(x.xid)
      FROM pg_snapshot_xip(p_snapshot) x(xid)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_locks l
                         JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                        WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'
                          AND l.transactionid = xid(x.xid)
                          AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d
                                           WHERE d.datname = current_database()))
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts p
                        WHERE p.transaction = xid(x.xid) AND p.database <> current_database())
$$;

CREATE OR REPLACE FUNCTION pyxp.wake_feed_listeners()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_slot bigint := (extract(epoch FROM clock_timestamp()) * 10)::bigint;  -- 100 ms slots
    v_seen text := current_setting('pyxp.feed_slot_seen', true);
BEGIN
    IF lower(current_setting('pyxp.feed_wakeups', true) COLLATE "C") IN ('off', 'false', 'no', '0', 'f', 'n') THEN
        RETURN NULL;
    END IF;
    -- A backend reads the sequence at most once per slot: the last slot it
    -- saw is kept in its session (pyxp.feed_slot_seen). A stale or forged
    -- value only delays this session's own wake-ups, which are hints.
    IF v_seen IS NULL OR v_seen !~ '^[0-9]{1,18}$' OR v_slot > v_seen::bigint THEN
        IF v_slot > (SELECT s.last_value FROM pyxp.feed_wakeup_slot s) THEN
            PERFORM setval('pyxp.feed_wakeup_slot', v_slot);
            PERFORM pg_notify('pyxp_changes', '');
        END IF;
        PERFORM set_config('pyxp.feed_slot_seen', v_slot::text, false);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION pyxp.changes(after_cursor bigint DEFAULT 0, max_rows integer DEFAULT 100,
                             wallet text DEFAULT NULL)
RETURNS TABLE (cursor bigint, transaction_id bigint, user_wallet text, transaction_type text,
               xp_amount bigint, total_xp bigint, previous_level bigint, current_level bigint,
               campaign_id text, subject text, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pyxp, pg_temp
AS $$
DECLARE
    v_max integer := pyxp.checked_row_count('max_rows', changes.max_rows);
    v_wallet text := CASE WHEN changes.wallet IS NOT NULL THEN pyxp.checked_wallet(changes.wallet) END;
    v_after bigint := changes.after_cursor;
    v_snapshot pg_snapshot := pg_current_snapshot();
    -- Every group below this is final (see above): the oldest transaction the
    -- snapshot saw running that is not running in another database now, and
    -- the reader's own transaction if it has written (its id is in no
    -- snapshot's list of running ones, and it may still roll back). On a hot
    -- standby the list of running transactions is not exposed (it is kept in
    -- the snapshot's overflow): there, the snapshot's xmin, cluster-wide.
    v_horizon xid8 := CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(v_snapshot) ELSE least(
        pyxp.oldest_running_here(v_snapshot), pg_current_xact_id_if_assigned(), pg_snapshot_xmax(v_snapshot)) END;
    v_group xid8;
    v_rank bigint;
    v_floor bigint := (SELECT max(a.feed_floor) FROM pyxp.xp_ledger_archives a);
BEGIN
    IF v_after IS NULL OR v_after < 0 THEN
        RAISE EXCEPTION 'invalid after_cursor: %', coalesce(v_after::text, 'NULL')
            USING ERRCODE = 'PX023', HINT = 'after_cursor is 0 (from the start) or a cursor the feed returned';
    ELSIF (v_after >> 24)::text::xid8 >= pg_snapshot_xmax(v_snapshot) AND NOT pg_is_in_recovery() THEN
        -- A group no transaction has reached: no cursor the feed returned
        -- (0028: one was accepted, and the rows below it skipped for good, a
        -- hostile test); or one from a cluster whose transaction ids ran
        -- higher (a dump restored elsewhere). A standby may lag: there, none
        -- is refused.
        RAISE EXCEPTION 'after_cursor % is ahead of the feed (its group % has no transaction yet)',
                        v_after, v_after >> 24
            USING ERRCODE = 'PX023',
                  HINT = 'pass 0 or a cursor this database''s feed returned (README "Live XP": a restored copy starts its cursors again)';
    ELSIF v_after < v_floor AND (v_wallet IS NULL OR pyxp.wallet_feed_behind_archive(v_wallet, v_after, v_floor)) THEN
        -- Rows after this cursor were archived (sql/13_retention.sql): never
        -- skipped silently.
        RAISE EXCEPTION 'rows after cursor % were archived', v_after
            USING ERRCODE = 'PX029',
                  DETAIL = format('the archived rows reach cursor %s', v_floor),
                  HINT = 'a consumer must be past the rows archived; they are in schema pyxp_archive (or its dump)';
    END IF;
    v_group := (v_after >> 24)::text::xid8;
    v_rank := v_after & 16777215;
    RETURN QUERY
        WITH page AS (
            -- Rows from before 0003: cursor = id.
            (SELECT t.id AS cur, t.*
               FROM pyxp.xp_transactions t
              WHERE t.feed_xid IS NULL AND t.id > v_after
                AND (v_wallet IS NULL OR t.user_wallet = v_wallet)
              ORDER BY t.id
              LIMIT v_max)
            UNION ALL
            -- Whole feed: final groups from the cursor's on, ranked as scanned
            -- (index xp_transactions_feed; the window streams, LIMIT stops it).
            (SELECT (g.feed_xid::text::bigint << 24)
                    + CASE WHEN g.rank > 16777215 THEN pyxp.raised_feed_overflow(g.feed_xid) ELSE g.rank END,
                    g.id, g.user_wallet, g.transaction_type,
                    g.xp_amount, g.xp_requested, g.balance_after, g.rule_id, g.campaign_id, g.subject,
                    g.idempotency_key, g.metadata, g.reverses, g.created_at, g.feed_xid, g.request_digest,
                    g.wallet_seq
               FROM (SELECT t.*, row_number() OVER (PARTITION BY t.feed_xid ORDER BY t.id) AS rank
                       FROM pyxp.xp_transactions t
                      WHERE v_wallet IS NULL AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                      ORDER BY t.feed_xid, t.id) g
              WHERE g.feed_xid > v_group OR g.rank > v_rank
              ORDER BY g.feed_xid, g.id
              LIMIT v_max)
            UNION ALL
            -- One wallet: its rows in chain order (= feed order, fact 2), each
            -- ranked within its whole group.
            (SELECT (t.feed_xid::text::bigint << 24)
                    + CASE WHEN r.rank > 16777215 THEN pyxp.raised_feed_overflow(t.feed_xid) ELSE r.rank END, t.*
               FROM pyxp.xp_transactions t
              CROSS JOIN LATERAL (SELECT count(*) AS rank FROM pyxp.xp_transactions o
                                   WHERE o.feed_xid = t.feed_xid AND o.id <= t.id) r
              WHERE v_wallet IS NOT NULL AND t.user_wallet = v_wallet
                AND t.feed_xid >= v_group AND t.feed_xid < v_horizon
                AND (t.feed_xid > v_group OR r.rank > v_rank)
              ORDER BY t.wallet_seq
              LIMIT v_max)
        )
        SELECT p.cur, p.id, p.user_wallet, p.transaction_type, p.xp_amount, p.balance_after,
               before_.level, after_.level, p.campaign_id, p.subject, p.created_at
          FROM page p
         CROSS JOIN LATERAL (SELECT pyxp.row_ruleset(p.rule_id, p.idempotency_key) AS ruleset_id) q
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after - p.xp_amount) before_
         CROSS JOIN LATERAL pyxp.curve_position(q.ruleset_id, p.balance_after) after_
         ORDER BY p.cur
         LIMIT v_max;
    -- Read with a snapshot older than an archive's commit: those rows were
    -- missing, and the floor above unseen (40001).
    PERFORM pyxp.ledger_unmoved();
END
$$;

CREATE OR REPLACE FUNCTION pyxp.apply_rules_retroactively(ruleset_id bigint)
RETURNS TABLE (ruleset_id_applied bigint, name text, version integer, already_applied boolean,
               wallets_adjusted bigint, xp_adjusted numeric, balances_changed bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pyxp, pg_temp
SET lock_timeout = '10s'  -- see recalculate_levels: never queue every award behind an open transaction
SET jit = off
AS $$
DECLARE
    v_ruleset pyxp.rulesets := pyxp.checked_ruleset(apply_rules_retroactively.ruleset_id);
    v_levels bigint;
    v_chunk pyxp.pending_row[];
    v_wallets bigint := 0;
    v_xp numeric := 0;
    v_call bigint := nextval('pyxp.retroactive_applications');
BEGIN
    PERFORM pyxp.require_read_committed();
    -- Installers' lock first, then the awards' (the order of install_ruleset).
    LOCK TABLE pyxp.rulesets IN SHARE ROW EXCLUSIVE MODE;
    LOCK TABLE pyxp.xp_balances IN SHARE ROW EXCLUSIVE MODE;
    v_levels := pyxp.activate_ruleset(v_ruleset.ruleset_id);
    -- Wallets in order, 10,000 per call of the writer.
    FOR v_chunk IN
        SELECT array_agg(ROW(0, d.user_wallet, d.key,
                             jsonb_build_object('action', 'RULES_ADJUSTMENT', 'wallet', d.user_wallet,
                                                'ruleset_id', v_ruleset.ruleset_id),
                             'RULES_ADJUSTMENT', d.delta, NULL, false, NULL, NULL, NULL,
                             jsonb_build_object('ruleset_id', v_ruleset.ruleset_id, 'ruleset', v_ruleset.name,
                                                'version', v_ruleset.version, 'total_xp_before', d.now_xp,
                                                'reason', 'retroactive application of the rules'),
                             NULL, 0)::pyxp.pending_row ORDER BY d.user_wallet)
          FROM (SELECT s.user_wallet, s.total_xp_then - s.total_xp_now AS delta, s.total_xp_now AS now_xp,
                       format('rules.adjustment:%s:%s.%s:%s', v_ruleset.ruleset_id, pg_current_xact_id(),
                              v_call, s.user_wallet) AS key,
                       (row_number() OVER (ORDER BY s.user_wallet) - 1) / 10000 AS chunk
                  FROM pyxp.simulated_totals(v_ruleset.ruleset_id) s
                 WHERE pyxp.checked_simulated_total(s.user_wallet, s.total_xp_then) <> s.total_xp_now) d
         GROUP BY d.chunk
         ORDER BY d.chunk
    LOOP
        PERFORM pyxp.counted_transaction_rows(cardinality(v_chunk));  -- the feed's bound (sql/11_changes.sql)
        PERFORM FROM pyxp.append_rows(v_ruleset.ruleset_id, v_ruleset.balance_floor, v_ruleset.timezone,
                                      v_ruleset.has_caps, v_chunk, true);
        v_wallets := v_wallets + cardinality(v_chunk);
        v_xp := v_xp + (SELECT sum(c.xp_amount) FROM unnest(v_chunk) c);
    END LOOP;
    IF v_wallets > 0 THEN
        UPDATE pyxp.rulesets r SET applied_retroactively_at = now() WHERE r.ruleset_id = v_ruleset.ruleset_id;
    END IF;
    RETURN QUERY SELECT v_ruleset.ruleset_id, v_ruleset.name, v_ruleset.version, v_wallets = 0, v_wallets, v_xp,
                        v_levels;
END
$$;

-- The forms this database stored that read otherwise now: its registrations'
-- emails and its onboarding keys' (kept in xp_requests, or on the ledger's
-- rows). Only where lower() in this database's collation folds a letter
-- otherwise than pyxp.lower_cased (not in C.UTF-8: nothing to read then).
DO $forms$
BEGIN
    IF EXISTS (SELECT FROM generate_series(65, 125251) c
                WHERE c NOT BETWEEN 55296 AND 57343 AND lower(chr(c)) <> pyxp.lower_cased(chr(c))) THEN
        INSERT INTO pyxp.xp_email_forms_before_0028 (client_email, stored_form)
        SELECT DISTINCT pyxp.lower_cased(pyxp.trimmed_text(f.form, true)), f.form
          FROM (SELECT a.client_email AS form FROM pyxp.agency_b2c_clients a
                UNION
                SELECT substr(q.idempotency_key, 18) FROM pyxp.xp_requests q
                 WHERE q.idempotency_key LIKE 'client.onboarded:%'
                UNION
                SELECT substr(t.idempotency_key, 18) FROM pyxp.xp_transactions t
                 WHERE t.idempotency_key LIKE 'client.onboarded:%') f
         WHERE pyxp.lower_cased(pyxp.trimmed_text(f.form, true)) <> f.form;
    END IF;
END
$forms$;

RESET ROLE;
