"""Word and phrase banks for the simulated city (vocabulary from the 2019 成都 整治形式主义、官僚主义 article).

Everything here is data: the generator picks from these banks with numpy indices, so growing a bank
grows the variety of the output without touching code.
"""

from __future__ import annotations

# (id, Chinese name, area code suffix) — the 22 districts/counties of the city, pinyin-ish ids.
DISTRICTS: list[tuple[str, str]] = [
    ("gaoxin", "成都高新区"), ("tianfu", "成都天府新区"), ("jinjiang", "锦江区"), ("qingyang", "青羊区"),
    ("jinniu", "金牛区"), ("wuhou", "武侯区"), ("chenghua", "成华区"), ("longquanyi", "龙泉驿区"),
    ("qingbaijiang", "青白江区"), ("xindu", "新都区"), ("wenjiang", "温江区"), ("shuangliu", "双流区"),
    ("pidu", "郫都区"), ("xinjin", "新津区"), ("jianyang", "简阳市"), ("dujiangyan", "都江堰市"),
    ("pengzhou", "彭州市"), ("qionglai", "邛崃市"), ("chongzhou", "崇州市"), ("jintang", "金堂县"),
    ("dayi", "大邑县"), ("pujiang", "蒲江县"),
]

# City departments (市级部门): id suffix and Chinese name; ids become shi_<suffix>.
DEPARTMENTS: list[tuple[str, str]] = [
    ("minzhengju", "市民政局"), ("jiaoyuju", "市教育局"), ("gonganju", "市公安局"), ("caizhengju", "市财政局"),
    ("renshe", "市人社局"), ("guihuaziyuan", "市规划和自然资源局"), ("shengtaihuanjing", "市生态环境局"),
    ("zhujianju", "市住建局"), ("jiaotongju", "市交通运输局"), ("shuiwuju", "市水务局"),
    ("nongyenongcun", "市农业农村局"), ("shangwuju", "市商务局"), ("wenguangly", "市文广旅局"),
    ("weijianwei", "市卫健委"), ("tuijunju", "市退役军人局"), ("yingjiju", "市应急局"),
    ("shenjiju", "市审计局"), ("shijianju", "市市场监管局"), ("tongjiju", "市统计局"),
    ("yibaoju", "市医保局"), ("zhengwuju", "市政务服务管理和网络理政办"), ("fagaiwei", "市发改委"),
    ("jingxinju", "市经信局"), ("kejiju", "市科技局"), ("sifaju", "市司法局"), ("tiyuju", "市体育局"),
    ("lvyouju", "市公园城市建设管理局"), ("chengguanwei", "市城管委"), ("xinfangju", "市信访局"),
    ("tuopinban", "市乡村振兴局"), ("jinrongju", "市金融工作局"), ("touzicujin", "市投促局"),
    ("koubanju", "市口岸物流办"), ("jiguanshiwu", "市机关事务管理局"), ("dananguan", "市档案馆"),
    ("difangzhi", "市地方志办"), ("gongshanglian", "市工商联"), ("zonggonghui", "市总工会"),
    ("tuanshiwei", "团市委"), ("fulian", "市妇联"), ("kexie", "市科协"), ("canlian", "市残联"),
    ("hongshizihui", "市红十字会"), ("wenlian", "市文联"), ("zuolian", "市作协"), ("qiaolian", "市侨联"),
    ("zongjiaoju", "市民宗局"), ("renfangban", "市人防办"), ("gongjijin", "市住房公积金管理中心"),
    ("shuiwuju2", "市税务局"), ("haiguan", "成都海关"), ("qixiangju", "市气象局"), ("dizhenju", "市地震局"),
    ("gongxiaoshe", "市供销社"), ("xinxizx", "市大数据中心"), ("jianyuju", "市监狱管理局"),
    ("ribaoshe", "成都日报社"), ("guangdian", "成都广播电视台"), ("dangxiao", "市委党校"),
    ("zuzhibu", "市委组织部"), ("xuanchuanbu", "市委宣传部"), ("tongzhanbu", "市委统战部"),
    ("zhengfawei", "市委政法委"), ("bianban", "市委编办"), ("laoganbu", "市委老干部局"),
    ("zhengyanshi", "市委政研室"), ("shiweiban", "市委办公厅"), ("zhengfuban", "市政府办公厅"),
    ("renda", "市人大常委会办公厅"), ("zhengxie", "市政协办公厅"), ("fayuan", "市中级人民法院"),
    ("jianchayuan", "市人民检察院"), ("guoziwei", "市国资委"), ("xingzhengshenpi", "市行政审批局"),
]

TOWN_SUFFIXES = ["街道", "镇"]
PLACE_STEMS = [
    "桂溪", "石羊", "芳草", "肖家河", "中和", "合作", "西园", "新源", "春熙路", "书院街", "牛市口", "双桥子",
    "草市街", "府南", "光华", "金沙", "抚琴", "驷马桥", "荷花池", "玉林", "浆洗街", "簇桥", "望江路",
    "猛追湾", "跳蹬河", "龙潭", "十陵", "大面", "洛带", "柳城", "永宁", "万春", "公平", "华阳", "正兴",
    "犀浦", "安德", "团结", "花源", "永商", "灌口", "幸福", "聚源", "天马", "致和", "丹景山", "临邛",
    "羊安", "崇阳", "三江", "赵镇", "淮口", "晋原", "安仁", "鹤山", "大塘", "西来", "新繁", "大丰", "三河",
]
VILLAGE_SUFFIXES = ["社区", "村"]
DEPT_SECTIONS = ["办公室", "综合科", "政策法规科", "督查科", "财务科", "行政审批科", "人事科", "执法大队",
                 "信访科", "规划发展科"]

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
GIVEN_CHARS = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏飞斌宇浩凯鑫波辉晨琳雪梅志文建国荣海燕春林云峰毅亮婷瑶佳琦欣怡思雨晓东")
TITLES = ["科员", "副科长", "科长", "主任科员", "副主任", "主任", "干事", "专干", "网格员", "站长"]
LEADER_TITLES = ["副局长", "局长", "副区长", "副书记", "纪工委书记", "党组成员", "副主任"]

CATEGORY_CODES = [f"{a}{b:02d}" for a in "ABCDE" for b in range(1, 5)][:18]  # 5 方面 18 类

# Project titles: scope + focus + suffix.
TITLE_SCOPES = ["", "深化", "全面推进", "集中开展", "持续推进", "扎实开展", "着力推进", "聚焦"]
TITLE_FOCUS = [
    "文山会海", "基层减负", "过度留痕", "督查检查考核过多过滥问题", "服务企业中的形式主义、官僚主义问题",
    "群众诉求回应不及时问题", "重大决策部署落实“两难三低”问题", "政务服务窗口作风",
    "村（社区）事项准入", "民生领域证明材料清理", "联企清风行", "重点项目推进迟缓问题",
    "责任转嫁问题", "便民服务态度生硬问题", "政策落实“最后一公里”", "形式主义、官僚主义重点问题",
    "行政执法不规范问题", "证照办理堵点", "减负降费政策落实", "痕迹管理规范",
]
TITLE_SUFFIXES = ["专项整治", "重点整治项目", "攻坚行动", "专项行动", "整治工作", "提质增效行动"]

# Summary boilerplate shared by every report (a trap for copy detection).
BOILERPLATE_OPEN = [
    "坚持以党的政治建设为统领，坚决破除形式主义、官僚主义。",
    "坚持以党的政治建设为统领，持续深化作风建设。",
    "深入贯彻落实市纪委监委关于以项目化方式推进形式主义、官僚主义问题重点整治的部署要求。",
    "按照《方案》明确的实施步骤，扎实推进重点整治项目。",
]
BOILERPLATE_CLOSE = [
    "下一步，将继续压实主体责任，确保整治工作取得实效。",
    "下一步，将坚决避免搞形式、走过场，推动整治成果转化为制度机制。",
    "下一步，将总结可复制、可推广的工作经验，形成长效机制。",
    "下一步，将持续跟踪问效，做到事事有着落、件件有回音。",
]
# Specific sentences: "{date}，{place}" + template with two numbers {a} and {b}.
SPECIFIC_TEMPLATES = [
    "走访辖区企业{a}家，收集问题和意见建议{b}条",
    "开展明察暗访{a}次，发现作风问题{b}个",
    "召开专题推进会{a}场，研究解决具体问题{b}项",
    "梳理形成问题清单{a}项，已完成整改{b}项",
    "精简各类证明、佐证材料{a}项，减少办事环节{b}个",
    "开展谈心谈话{a}人次，回访教育{b}人次",
    "清理规范各类检查评比事项{a}项，取消示范创建活动{b}项",
    "建立整改台账{a}本，逐项销号{b}项",
    "组织业务培训{a}场，培训干部{b}人次",
    "发放“联系服务卡”{a}张，电话回访企业{b}家",
    "压减各类文件{a}件，压减会议{b}个",
    "受理群众诉求{a}件，按期办结{b}件",
    "督促职能部门制发交办函{a}份，推动落实整改措施{b}条",
    "对推动不力的问责{a}件，涉及{b}人",
    "实地核查重点项目{a}个，现场督促解决问题{b}个",
    "投入专项资金{a}万元，惠及群众{b}户",
    "明确村（社区）依法协助事项{a}项，负面事项{b}项",
    "整合各类报表{a}张，基层填报时间平均缩短{b}小时",
    "移交问题线索{a}条，立案审查{b}件",
    "召开院坝会、坝坝会{a}场，听取群众意见{b}条",
]
ACTION_LINKS = ["在", "深入", "组织", "会同", "聚焦"]
SPECIFIC_TAILS = ["", "，相关情况已录入台账", "，整改情况已向群众反馈", "，形成工作样本一份", "，问题已全部销号",
                  "，剩余问题正在推进中", "，做到即知即改", "，群众满意度明显提升"]

# Stage report metrics: (name, log-normal median, is_money)
METRICS: list[tuple[str, float, bool]] = [
    ("走访企业数", 40.0, False), ("整改问题数", 25.0, False), ("培训人次", 120.0, False),
    ("投入资金(万元)", 60.0, True), ("收集意见建议数", 50.0, False), ("精简材料数", 20.0, False),
    ("回访群众数", 90.0, False), ("召开会议数", 12.0, False), ("发放服务卡数", 150.0, False),
    ("办结诉求件数", 70.0, False), ("受益群众户数", 300.0, False),
]

# Evidence file-name topics per kind (file_name like `2026年11月走访企业签到表.jpg`).
EVIDENCE_TOPICS = ["走访企业", "明察暗访", "专题推进会", "整改落实", "业务培训", "院坝会", "入户回访", "现场核查",
                   "政策宣讲", "座谈会"]
KIND_FILE_SUFFIX = {
    "photo": ("现场照片", "jpg"), "sign_in_sheet": ("签到表", "jpg"), "meeting_minutes": ("会议记录", "docx"),
    "document": ("工作方案", "pdf"), "ledger": ("整改台账", "xlsx"), "video": ("视频", "mp4"),
    "other": ("附件", "zip"),
}
NOTICE_FILE = "关于以项目化方式深入推进形式主义、官僚主义问题重点整治的实施方案.pdf"

PROBLEM_DESCRIPTIONS = [
    "政务服务窗口对待群众态度生硬", "会议材料层层加码、重复报送", "检查考核过多过滥，基层负担过重",
    "对群众诉求回应不及时", "对上级部署要求打折扣、搞变通", "过度强调工作留痕，材料堆砌",
    "证照办理环节多、时限长", "责任延伸变责任转嫁", "便民服务单位推诿扯皮", "重点项目推进迟缓",
    "政策落实不到位、宣传走过场", "行政执法随意、标准不一", "村（社区）承担事项超出准入清单",
    "涉企检查频次过高", "办事指南更新不及时",
]

# Legacy / filedrop enumerations (contract §3).
LEGACY_UNIT_KIND = {"district": "区县", "department": "部门", "town": "镇街", "village": "村社区"}
LEGACY_STATUS = {"planning": "谋划中", "in_progress": "实施中", "completed": "已完成", "suspended": "暂停",
                 "cancelled": "撤销"}
LEGACY_STAGE = {"initiation": "谋划立项", "implementation": "组织实施", "interim_result": "阶段成果",
                "acceptance": "验收结项"}
LEGACY_KIND = {"photo": "照片", "sign_in_sheet": "签到表", "meeting_minutes": "会议记录", "document": "文件",
               "ledger": "台账", "video": "视频", "other": "其他"}
LEGACY_ORIGIN = {"inspection": "明察暗访", "enterprise_visit": "走访企业", "public_report": "群众反映",
                 "self_check": "自查"}
LEGACY_PROBLEM_STATUS = {"open": "整改中", "rectified": "已整改", "transferred": "移交线索"}
